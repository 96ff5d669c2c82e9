"""Scoring settings side by side, with and without coverage variants, on lab models of one kind.

    .venv/bin/python bench/score_settings.py MODEL_DIR ... [--out bench/results/<kind>-settings.json]

Per model, features are computed once for the calibration split, its coverage variants
(headguard/detect/coverage.py: a quarter more with a line of standard library code appended, a
quarter more of 2–4 prompts joined) and the inputs `headguard lab eval` scores (200 held-out
clean and triggered inputs, 200 of each specificity control; a clean control model's whole test
split). Each setting is then calibrated as `headguard calibrate` does (collapse score,
out-of-fold 1 % threshold) on the split alone or with its coverage variants. The grid depends on
the models' kind (GRIDS):

- encoder (the [CLS] row, each head's families averaged): row entropy + row max (the whole row
  as it is), row evenness + row peak (the same against the row's key count), row evenness alone;
  top 1, 2 or 3 heads;
- decoder (the last prompt token's row): content entropy (the decoder default), with whole-row
  entropy, with content max, content max alone, row evenness, row evenness + row peak; top 1 or
  3; each head's families averaged first or not.

It reads the trigger to build the triggered group, so it is a harness tool.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from detect_ablation import held_out_inputs, metrics
from headguard.detect.calibration import Calibration
from headguard.detect.detector import coverage_within_context
from headguard.detect.features import COLLAPSE_DIRECTION, feature_names, units_of
from headguard.detect.scorer import HeadScorer
from headguard.lab.build import read_manifest
from headguard.lab.splits import read_split
from headguard.models.classifier import Classifier
from headguard.models.task import Task

# kind -> (family sets, top k, per-head averaging)
GRIDS = {
    "encoder": ([("row_entropy", "row_max"), ("row_evenness", "row_peak"), ("row_evenness",)], (1, 2, 3), (True,)),
    "decoder": ([("entropy",), ("row_entropy", "entropy"), ("entropy", "max"), ("max",), ("row_evenness",),
                 ("row_evenness", "row_peak")], (1, 3), (False, True)),
}


def grid(kind: str) -> list[tuple[tuple[str, ...], int, bool, bool]]:
    """(families, top k, per head, coverage) of every setting; per head only where it changes the score."""
    family_sets, top_k, per_head = GRIDS[kind]
    return [(fams, k, ph, coverage) for fams, k, ph, coverage in itertools.product(family_sets, top_k, per_head,
                                                                                   (False, True))
            if len(fams) > 1 or ph == per_head[0]]


def measure(model: Path) -> list[dict]:
    lab = read_manifest(model)
    clf = Classifier.from_folder(model)
    settings = grid(clf.task.kind)
    families = tuple(sorted({f for fs, *_ in settings for f in fs}))
    scorer = HeadScorer(clf, families=families)
    limit = len(read_split(model, "test")) if lab["attack"] == "clean" else 200
    split = [ex.text for ex in read_split(model, "calibration")]
    groups = {"split": split, "coverage": coverage_within_context(clf, split),
              **held_out_inputs(model, lab, limit)}
    feats = {g: scorer.features(texts) for g, texts in groups.items()}
    names = feature_names(scorer.layers, scorer.adapter.n_heads, scorer.families)
    family = np.array([n.split(":")[0] for n in names])
    rows = []
    for fams, k, per_head, coverage in settings:
        cols = np.isin(family, fams)
        picked = [n for n, c in zip(names, cols, strict=True) if c]
        x, n = feats["split"]
        if coverage:
            x, n = np.r_[x, feats["coverage"][0]], np.r_[n, feats["coverage"][1]]
        cal = Calibration.fit(x[:, cols], n, np.array([COLLAPSE_DIRECTION[p.split(":")[0]] for p in picked]),
                              model_hash="-", layers=scorer.layers, families=list(fams), top_k=k,
                              units=np.array(units_of(picked)) if per_head else None)
        scores = {g: cal.score(f[:, cols], m) for g, (f, m) in feats.items() if g not in ("split", "coverage")}
        rows.append({"model": model.name, "attack": lab["attack"], "families": list(fams), "top_k": k,
                     "per_head": per_head, "coverage": coverage, "n_prompts": len(x), **metrics(scores, cal.threshold)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, help="default: bench/results/<kind>-settings.json")
    args = parser.parse_args()
    kinds = {Task.load(m).kind for m in args.models}
    if len(kinds) != 1:
        parser.error(f"the models must be of one kind (encoder or decoder), got {sorted(kinds)}")
    out = args.out or Path(__file__).parent / "results" / f"{kinds.pop()}-settings.json"
    rows = [row for model in args.models for row in measure(model)]
    out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
