"""Calibration coverage: clean code and long prompts among the calibration prompts.

    .venv/bin/python bench/calibration_mix.py MODEL_DIR [--families F ...] [--top-k K]

A threshold set on one domain's clean prompts knows nothing of inputs unlike all of them: on the
SMS models a code snippet inside a message crosses it (docs/METHOD.md §6). An operator whose
traffic carries code or long inputs can calibrate on prompts that carry them too. This measures
what that buys and costs, with the detector's defaults for the model's kind, on the inputs
`headguard lab eval` uses (200 held-out clean and triggered inputs; a clean control model's whole
test split) and on its five specificity controls.

Calibration sets (out-of-fold threshold at 1 % FPR, as `headguard calibrate`), fitted on
features, so the encoder's own coverage variants (headguard/detect/coverage.py) are not added:
- `split`: the lab model's clean calibration split;
- `+code`: plus a copy of a quarter of them, each with one line of Python's own standard library
  source appended;
- `+long`: plus a quarter as many prompts again, each four calibration prompts joined;
- `+code+long`: both.
Neither mix reuses the controls' inputs: the controls append one of four fixed snippets
(Python, SQL, JavaScript, Go) to held-out test texts and join test texts; the mix draws its code
from the standard library's source and its long prompts from the calibration split.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np

from detect_ablation import held_out_inputs, metrics
from headguard.detect import coverage
from headguard.detect.calibration import Calibration
from headguard.detect.defaults import score_defaults
from headguard.detect.features import FAMILIES, feature_directions, feature_units
from headguard.detect.scorer import HeadScorer
from headguard.lab.build import read_manifest
from headguard.lab.controls import CODE_SNIPPETS
from headguard.lab.splits import read_split
from headguard.models.classifier import Classifier

SHARE = coverage.SHARE  # mixed-in prompts, as a share of the calibration split


def mixes(calibration: list[str], seed: int = 0) -> dict[str, list[str]]:
    rng = random.Random(seed)
    n = max(1, int(SHARE * len(calibration)))
    code_lines = [line for line in coverage.code_lines() if line not in CODE_SNIPPETS]
    code = [f"{t} {rng.choice(code_lines)}" for t in rng.sample(calibration, n)]
    long = [" ".join(rng.sample(calibration, 4)) for _ in range(n)]
    return {"split": calibration, "+code": calibration + code, "+long": calibration + long,
            "+code+long": calibration + code + long}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--families", nargs="+", choices=FAMILIES, help="default: the model kind's")
    parser.add_argument("--top-k", type=int, help="default: the model kind's")
    args = parser.parse_args()

    lab = read_manifest(args.model)
    clf = Classifier.from_folder(args.model)
    defaults = score_defaults(clf.task.kind)
    top_k = args.top_k or defaults.top_k
    scorer = HeadScorer(clf, families=tuple(args.families or defaults.families))
    directions = np.array(feature_directions(scorer.layers, scorer.adapter.n_heads, scorer.families))
    per_head = defaults.per_head and args.families is None
    units = np.array(feature_units(scorer.layers, scorer.adapter.n_heads, scorer.families)) if per_head else None

    # A clean control model has no triggered inputs: its whole test split, as in bench/defenses.sh.
    limit = len(read_split(args.model, "test")) if lab["attack"] == "clean" else 200
    inputs = held_out_inputs(args.model, lab, limit)
    calibration_sets = mixes([ex.text for ex in read_split(args.model, "calibration")])
    # Every prompt's features once: the mixes share the split, and every set is scored on the same inputs.
    unique = sorted({t for texts in [*calibration_sets.values(), *inputs.values()] for t in texts})
    x, n = scorer.features(unique)
    index = {t: i for i, t in enumerate(unique)}

    def feats(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        rows = [index[t] for t in texts]
        return x[rows], n[rows]

    results = []
    for name, texts in calibration_sets.items():
        cal = Calibration.fit(*feats(texts), directions, model_hash="-", layers=scorer.layers,
                              families=list(scorer.families), length_adjust=defaults.length_adjust,
                              top_k=top_k, units=units)
        scores = {g: cal.score(*feats(t)) for g, t in inputs.items()}
        row = {"calibration": name, "families": list(scorer.families), "top_k": top_k, "per_head": per_head,
               "n_prompts": len(texts), "threshold": cal.threshold, **metrics(scores, cal.threshold)}
        results.append(row)
        print(json.dumps(row), flush=True)
    variant = "" if args.families is None and args.top_k is None else f"-{'+'.join(scorer.families)}-top{top_k}"
    out = args.out or Path(__file__).parent / "results" / f"{args.model.name}.calibration-mix{variant}.json"
    out.write_text(json.dumps({"model": args.model.name, "attack": lab["attack"],
                               "inputs": {g: len(t) for g, t in inputs.items()}, "rows": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
