"""A grid of scoring settings on one lab model: which feature, aggregation and calibration set?

    .venv/bin/python bench/score_sweep.py MODEL_DIR

Features of every family (docs/METHOD.md §2) are computed once for the calibration split, its
`+code`/`+long` mixes (bench/calibration_mix.py) and the inputs `headguard lab eval` scores
(cached in $HEADGUARD_CACHE/bench/, keyed by the weights, the families and the texts). Every
setting of the grid is then fitted on a calibration set and thresholded at the 99th percentile
of its out-of-fold scores, as `headguard calibrate` does:

- families: each alone, and a few combinations;
- aggregation: mean of the top k standardised deviations in the collapse direction (k = 1, 3, 5;
  the detector's `collapse` score), the same after averaging each head's families (`per-head`,
  k = 1, 3: a head counts when its measures agree), the top k in either direction
  (`two-sided`), or the mean squared z over every feature, clipped at 4 (`mean z²`: many heads
  moving a little at once);
- length adjustment off or on;
- calibration set: split, +code, +long, +code+long.

It reads the trigger to build the triggered group, so it is a harness tool.
Writes bench/results/<model>.sweep.json.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from calibration_mix import mixes
from decoder_readout import oof_threshold
from detect_ablation import held_out_inputs, metrics
from headguard.detect.calibration import AnomalyModel
from headguard.detect.defaults import score_defaults
from headguard.detect.features import COLLAPSE_DIRECTION, FAMILIES, feature_names, units_of
from headguard.detect.scorer import HeadScorer
from headguard.lab.build import read_manifest
from headguard.lab.splits import read_split
from headguard.models.classifier import Classifier
from headguard.models.fingerprint import weights_hash
from headguard.models.task import Task

FAMILY_SETS = [("row_entropy",), ("row_max",), ("entropy",), ("max",), ("sink",), ("cosine",),
               ("entropy", "sink"), ("row_entropy", "entropy"), ("row_entropy", "max"), ("row_entropy", "row_max"),
               ("entropy", "max", "sink"), FAMILIES]
AGGREGATIONS = [("collapse", 1), ("collapse", 3), ("collapse", 5), ("per-head", 1), ("per-head", 3),
                ("two-sided", 1), ("two-sided", 3), ("two-sided", 5), ("mean z²", 0)]
CALIBRATIONS = ("split", "+code", "+long", "+code+long")


def cached_features(model: Path, groups: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Every family's features of every group's texts (one forward pass per distinct text), cached
    under a key of the model's weights, the families and the texts, so a rebuilt model, a new family
    or new inputs recompute."""
    clf = Classifier.from_folder(model)
    contents = json.dumps([FAMILIES, groups], sort_keys=True)
    key = hashlib.sha256((weights_hash(clf.model) + contents).encode()).hexdigest()
    cache = Path(os.environ.get("HEADGUARD_CACHE", Path.home() / ".cache" / "headguard")) / "bench"
    path = cache / f"{model.name}.{key[:16]}.features.npz"
    if not path.exists():
        scorer = HeadScorer(clf, families=FAMILIES)
        unique = sorted({t for texts in groups.values() for t in texts})
        x, n = scorer.features(unique)
        index = {t: i for i, t in enumerate(unique)}
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, x=x, n=n, names=np.array(feature_names(scorer.layers, scorer.adapter.n_heads, FAMILIES)),
                 **{f"idx_{g}": np.array([index[t] for t in texts]) for g, texts in groups.items()})
    return dict(np.load(path))


def fit_score(x: np.ndarray, lengths: np.ndarray, direction: np.ndarray, units: np.ndarray, aggregation: str,
              k: int, length_adjust: bool):
    if aggregation in ("collapse", "per-head"):
        return AnomalyModel.fit(x, lengths, direction, length_adjust=length_adjust, top_k=k,
                                units=units if aggregation == "per-head" else None).score
    model = AnomalyModel.fit(x, lengths, direction, length_adjust=length_adjust)

    def score(y: np.ndarray, n: np.ndarray) -> np.ndarray:
        z = model.standardise(y, n)
        if aggregation == "mean z²":
            return (np.clip(np.abs(z), 0, 4) ** 2).mean(1)
        z = np.abs(z)
        return -np.partition(-z, k - 1, axis=1)[:, :k].mean(1)
    return score


COLUMNS = ["families", "aggregation", "top_k", "length_adjust", "calibration", "auroc", "tpr_at_fpr_1pct",
           "fpr_clean", "fpr_controls"]


def as_row(setting: dict) -> list:
    """One setting as a list in COLUMNS order, floats to 4 digits: the results file stays small."""
    def rounded(value):
        if isinstance(value, float):
            return round(value, 4)
        return {k: rounded(v) for k, v in value.items()} if isinstance(value, dict) else value
    return [rounded(setting[c]) for c in COLUMNS]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    args = parser.parse_args()
    lab = read_manifest(args.model)
    defaults = score_defaults(Task.load(args.model).kind)
    limit = len(read_split(args.model, "test")) if lab["attack"] == "clean" else 200
    inputs = held_out_inputs(args.model, lab, limit)
    calibration = mixes([ex.text for ex in read_split(args.model, "calibration")])
    data = cached_features(args.model, {**{f"calibration {c}": t for c, t in calibration.items()}, **inputs})
    x, n = data["x"], data["n"]
    family = np.array([name.split(":")[0].replace("cos", "cosine") for name in data["names"]])
    direction = np.array([COLLAPSE_DIRECTION[name.split(":")[0]] for name in data["names"]])
    units = np.array(units_of(list(data["names"])))

    rows = []
    grid = list(itertools.product(FAMILY_SETS, AGGREGATIONS, (False, True), CALIBRATIONS))
    for families, (aggregation, k), length_adjust, cal in tqdm(grid, desc="settings"):
        cols = np.isin(family, families)
        rows_cal = data[f"idx_calibration {cal}"]
        xc, nc = x[rows_cal][:, cols], n[rows_cal]
        fit = partial(fit_score, direction=direction[cols], units=units[cols], aggregation=aggregation, k=k,
                      length_adjust=length_adjust)
        threshold = oof_threshold(fit, xc, nc)
        score = fit(xc, nc)
        scores = {g: score(x[data[f"idx_{g}"]][:, cols], n[data[f"idx_{g}"]]) for g in inputs}
        rows.append({"families": list(families), "aggregation": aggregation, "top_k": k or None,
                     "length_adjust": length_adjust, "calibration": cal, **metrics(scores, threshold)})
    out = Path(__file__).parent / "results" / f"{args.model.name}.sweep.json"
    aggregation = "per-head" if defaults.per_head else "collapse"
    # Coverage variants (headguard/detect/coverage.py) join 2-4 prompts, unlike this grid's +long: a
    # default with coverage is not in the grid, and the report says so.
    default = {"families": list(defaults.families), "aggregation": aggregation, "top_k": defaults.top_k,
               "length_adjust": defaults.length_adjust, "calibration": "split", "coverage": defaults.coverage}
    head = json.dumps({"model": args.model.name, "attack": lab["attack"], "default": default,
                       "inputs": {g: len(t) for g, t in inputs.items()}, "columns": COLUMNS})
    out.write_text(head[:-1] + ', "rows": [\n' + ",\n".join(json.dumps(as_row(r)) for r in rows) + "\n]}\n")


if __name__ == "__main__":
    main()
