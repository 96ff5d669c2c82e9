"""Two alternatives to the encoder default, measured on saved features and not adopted (docs/METHOD.md §5).

    .venv/bin/python bench/score_variants.py FEATURES.npz ... [--out bench/results/score-variants.json]

FEATURES.npz are the files `bench/detect_ablation.py MODEL --features FILE` saves. Variants of the
encoder default of the time (spread_floor.MEASURED_WITH: top 1, no coverage variants), each
calibrated on the whole calibration split:

- default: as shipped (the threshold is the 99th percentile of the out-of-fold clean scores);
- conformal: the threshold is the ceil((n + 1) * 0.99)-th smallest out-of-fold score instead;
- length-normalised: row entropy divided by the log of the row's key count (content keys, [CLS]
  and [SEP]), and the heaviest share's log-odds plus the log of the key count, both structural
  (nothing fitted), against short inputs whose rows concentrate for want of keys: the
  `row_evenness` and `row_peak` families (headguard/detect/features.py) compute the same.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from spread_floor import MEASURED_WITH, fit_default, load, rates

SPECIAL_KEYS = 2  # [CLS] and [SEP]: in the whole row, not among the content keys


def length_normalised(x: np.ndarray, lengths: np.ndarray, names: list[str]) -> np.ndarray:
    keys = (lengths + SPECIAL_KEYS)[:, None]
    family = np.array([n.split(":")[0] for n in names])
    out = x.copy()
    entropy = family == "row_entropy"  # stored as log(H + 1e-3)
    out[:, entropy] = np.log((np.exp(x[:, entropy]) - 1e-3) / np.log(keys) + 1e-3)
    out[:, family == "row_max"] += np.log(keys)
    return out


def measure(x: dict, lengths: dict, names: list[str], variant: str) -> dict:
    if variant == "length-normalised":
        x = {g: length_normalised(v, lengths[g], names) for g, v in x.items()}
    cal = fit_default(x["calibration"], lengths["calibration"], names)
    threshold = cal.threshold
    if variant == "conformal":
        oof = np.sort(cal.clean_scores)
        threshold = float(oof[min(int(np.ceil((len(oof) + 1) * (1 - cal.target_fpr))), len(oof)) - 1])
    row = rates({g: cal.score(x[g], lengths[g]) for g in x if g != "calibration"}, threshold)
    return {k: round(v, 4) for k, v in row.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("features", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "score-variants.json")
    args = parser.parse_args()
    rows = []
    for path in args.features:
        x, lengths, names = load(path, MEASURED_WITH.families)
        for variant in ("default", "conformal", "length-normalised"):
            rows.append({"model": path.stem, "variant": variant, **measure(x, lengths, names, variant)})
            print(json.dumps(rows[-1]), flush=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
