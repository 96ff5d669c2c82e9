"""Held-out splits stored with a lab model, so every later measurement uses the same rows."""

from __future__ import annotations

import json
from pathlib import Path

from headguard.lab.datasets import Example

SPLITS_DIR = "splits"


def write_split(folder: Path, name: str, examples: list[Example]) -> None:
    path = folder / SPLITS_DIR / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps({"text": ex.text, "label": ex.label}, ensure_ascii=False) + "\n")


def read_split(folder: Path, name: str) -> list[Example]:
    path = Path(folder) / SPLITS_DIR / f"{name}.jsonl"
    with path.open(encoding="utf-8") as f:
        return [Example(row["text"], int(row["label"])) for row in map(json.loads, f) if row]
