"""Which scores set the threshold: every calibration prompt with its coverage variants, or the
prompts alone.

    .venv/bin/python bench/threshold_rule.py MODEL_DIR ... [--features DIR] [--out FILE]

`headguard calibrate` fits the anomaly model on the calibration prompts and their coverage
variants (code appended, prompts joined, part of a prompt said twice) and takes the (1 - target
FPR) quantile of all their out-of-fold scores as the threshold. The variants score higher than
the prompts they come from, so they raise the threshold: each lets fewer of its own kind of
input through, and fewer triggered inputs too. Per model, with its kind's defaults
(headguard/detect/defaults.py), this compares that rule (`pooled`) with the quantile of the
prompts' own out-of-fold scores (`prompts`: the variants still shape the fit and, the short ones,
the bar of short inputs), and that quantile with length bands over every row, variants included
(`prompts+bands`: a band whose own quantile lies above it has its bar raised to it). It reads
the features bench/score_settings.py computes (the same --features folder reuses them) and the
trigger, so it is a harness tool.
Writes bench/results/threshold-rule.json (rows of models not measured in this run are kept).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from headguard.detect.calibration import Calibration, bands
from headguard.detect.coverage import REPEAT
from headguard.detect.defaults import score_defaults
from headguard.lab.build import read_manifest
from headguard.models.task import Task
from score_settings import (
    _group,
    _own,
    _shared,
    cached_features,
    calibration_set,
    fit_setting,
    held_out,
    rates,
    write_rows,
)

RULES = ("pooled", "prompts", "prompts+bands")


def prompts_quantile(cal: Calibration, n_prompts: int) -> float:
    """The (1 - target FPR) quantile of the first `n_prompts` rows' out-of-fold scores (the
    calibration split's, without its variants)."""
    return float(np.quantile(cal.clean_scores[:n_prompts], 1 - cal.target_fpr))


def prompts_rule(cal: Calibration, n_prompts: int, lengths: np.ndarray, band_only: np.ndarray,
                 length_bands: bool) -> tuple:
    """(threshold, band edges, band offsets) with the threshold from the first `n_prompts` rows'
    out-of-fold scores (the calibration split's) and the bands set against it as `fit` sets them
    (`length_bands`: over every row, variants included, whatever the default says)."""
    threshold = prompts_quantile(cal, n_prompts)
    return (threshold, *bands(cal.clean_scores, lengths, band_only, cal.target_fpr, threshold, length_bands))


def measure(model: Path, cache: Path | None) -> list[dict]:
    lab = read_manifest(model)
    defaults = score_defaults(Task.load(model).kind)
    feats, names = cached_features(model, lab, cache)
    cal, cols = fit_setting(feats, names, defaults.families, defaults.top_k, defaults.per_head, defaults.coverage,
                            defaults.length_bands, defaults.length_adjust)
    _, lengths, band_only, _ = calibration_set(feats, defaults.coverage)
    groups = held_out(feats)
    # The fitted calibration rows, in calibration_set's order (the short variants come last and set a band only).
    parts = [("prompts", "split")]
    if _shared(defaults.coverage):
        parts.append(("code and joined", _group(_shared(defaults.coverage))))
    parts += [(source, _group((source,))) for source in _own(defaults.coverage)]
    if REPEAT in defaults.coverage:
        parts.append(("repeat", _group((REPEAT,))))
    sizes = {kind: len(feats[g][1]) for kind, g in parts}
    ends = np.cumsum(list(sizes.values()))
    rows = []
    for rule in RULES:  # one fitted model; each rule after the first replaces its threshold and bands
        if rule != "pooled":
            cal.threshold, cal.band_edges, cal.band_offsets = prompts_rule(
                cal, len(feats["split"][1]), lengths, band_only, rule == "prompts+bands" or cal.length_bands)
        scores = {g: cal.score(f[:, cols], n) for g, (f, n) in groups.items()}
        over = {kind: int((cal.clean_scores[end - size:end] > cal.threshold).sum())
                for (kind, size), end in zip(sizes.items(), ends, strict=True)}
        rows.append({"model": model.name, "attack": lab["attack"], "rule": rule, "threshold": cal.threshold,
                     "calibration_over_threshold": over, "calibration_sizes": sizes,
                     **rates(scores, cal.threshold)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--features", type=Path, help="bench/score_settings.py's features folder")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "threshold-rule.json")
    args = parser.parse_args()
    write_rows(args.out, args.models, lambda model: measure(model, args.features))


if __name__ == "__main__":
    main()
