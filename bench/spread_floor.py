"""The spread floor (headguard/detect/calibration.py SPREAD_FLOOR) against calibration-set size.

    .venv/bin/python bench/spread_floor.py FEATURES.npz ... [--out bench/results/spread-floor.json]

FEATURES.npz are the files `bench/detect_ablation.py MODEL --features FILE` saves (every feature
of the calibration split and the held-out groups). For each model, floor and calibration size,
the encoder default of the time (`MEASURED_WITH`: top 1, no coverage variants) is calibrated on
5 random draws of that many calibration prompts (the whole split once) and scored on the same
held-out inputs; the table gives the means over draws.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from headguard.detect.calibration import SPREAD_FLOOR, Calibration
from headguard.detect.defaults import ScoreDefaults
from headguard.detect.features import COLLAPSE_DIRECTION, units_of

# The encoder default when this was measured (docs/BENCHMARKS.md), before top 2 and coverage
# variants: the figures recorded there come from it.
MEASURED_WITH = ScoreDefaults(families=("row_entropy", "row_max"), top_k=1, length_adjust=False, per_head=True)
FLOORS = (0.0, 0.25, 0.5)
SIZES = (50, 100, 200)
DRAWS = 5


def load(path: Path, families: tuple[str, ...]) -> tuple[dict, dict, list[str]]:
    """(features by group, lengths by group, feature names) restricted to `families`."""
    data = np.load(path)
    names = [str(n) for n in data["names"]]
    cols = np.array([n.split(":")[0] in families for n in names])
    x = {k[: -len("_x")]: data[k][:, cols] for k in data.files if k.endswith("_x")}
    lengths = {g: data[f"{g}_length"] for g in x}
    return x, lengths, [n for n, c in zip(names, cols, strict=True) if c]


def fit_default(x: np.ndarray, lengths: np.ndarray, names: list[str],
                spread_floor: float = SPREAD_FLOOR) -> Calibration:
    """The encoder default it was measured with, calibrated on these clean features."""
    defaults = MEASURED_WITH
    direction = np.array([COLLAPSE_DIRECTION[n.split(":")[0]] for n in names])
    return Calibration.fit(x, lengths, direction, model_hash="-", layers=[], families=list(defaults.families),
                           top_k=defaults.top_k, units=np.array(units_of(names)) if defaults.per_head else None,
                           spread_floor=spread_floor)


def rates(scores: dict[str, np.ndarray], threshold: float) -> dict:
    """Per held-out group the share above the threshold, the worst of the clean groups, and AUROC."""
    row = {g: float((s > threshold).mean()) for g, s in scores.items()}
    row["worst_fpr"] = max(v for g, v in row.items() if g != "triggered")
    if "triggered" in scores:
        y = np.r_[np.zeros(len(scores["clean"])), np.ones(len(scores["triggered"]))]
        row["auroc"] = float(roc_auc_score(y, np.r_[scores["clean"], scores["triggered"]]))
    return row


def measure(x: dict, lengths: dict, names: list[str], floor: float, idx: np.ndarray) -> dict:
    cal = fit_default(x["calibration"][idx], lengths["calibration"][idx], names, floor)
    return rates({g: cal.score(x[g], lengths[g]) for g in x if g != "calibration"}, cal.threshold)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("features", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "spread-floor.json")
    args = parser.parse_args()
    rows = []
    for path in args.features:
        x, lengths, names = load(path, MEASURED_WITH.families)
        n = len(x["calibration"])
        for floor in FLOORS:
            for size in [s for s in SIZES if s < n] + [n]:
                draws = [np.arange(n)] if size == n else \
                    [np.random.default_rng(d).choice(n, size, replace=False) for d in range(DRAWS)]
                measured = [measure(x, lengths, names, floor, idx) for idx in draws]
                mean = {k: round(float(np.mean([m[k] for m in measured])), 4) for k in measured[0]}
                rows.append({"model": path.stem, "spread_floor": floor, "calibration_size": size,
                             "draws": len(draws), **mean})
                print(json.dumps(rows[-1]), flush=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
