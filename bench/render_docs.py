"""Fills the tables of docs/BENCHMARKS.md from bench/results/ (between the <!-- NAME --> markers)."""

from __future__ import annotations

import re
from pathlib import Path

from report import (
    ablation_table,
    cost_table,
    defense_table,
    lab_table,
    mix_table,
    readout_table,
    repair_table,
    serve_table,
    sweep_table,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"
TABLES = {"lab": lab_table, "defenses": defense_table, "ablation": ablation_table, "readout": readout_table,
          "mix": mix_table, "sweep": sweep_table, "repair": repair_table, "serve": serve_table, "cost": cost_table}

text = DOC.read_text()
for name, render in TABLES.items():
    pattern = re.compile(rf"(<!-- {name} -->\n).*?(<!-- /{name} -->)", re.S)
    text = pattern.sub(lambda m, r=render: m.group(1) + r() + "\n" + m.group(2), text)
DOC.write_text(text)
