"""An append-only journal of measurements, so an interrupted comparison keeps what it measured."""

from __future__ import annotations

import json
import os
from pathlib import Path


class Journal:
    """JSON lines in a file; each record is flushed and synced as soon as it is measured."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def records(self) -> list[dict]:
        """Returns every complete record (a line cut short by a crash is ignored)."""
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def append(self, record: dict) -> None:
        """Appends one record durably."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def reset(self) -> None:
        """Starts an empty journal."""
        self.path.unlink(missing_ok=True)


def record_type(record: dict) -> str:
    """Returns what a journal record holds ("start", "quality" or "latency")."""
    # Journals written before the key was renamed call it "kind".
    return record.get("record", record.get("kind", ""))
