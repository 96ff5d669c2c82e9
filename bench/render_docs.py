"""Fills the tables of docs/BENCHMARKS.md from bench/results/ (between the <!-- NAME --> markers)."""

from __future__ import annotations

import re
from pathlib import Path

from report import TABLES

DOC = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"

text = DOC.read_text()
for name, render in TABLES.items():
    pattern = re.compile(rf"(<!-- {name} -->\n).*?(<!-- /{name} -->)", re.S)
    text = pattern.sub(lambda m, r=render: m.group(1) + r() + "\n" + m.group(2), text)
DOC.write_text(text)
