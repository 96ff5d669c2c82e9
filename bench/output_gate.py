"""Does the model's own answer tell a trigger from an unusual clean input the heads react to?

    .venv/bin/python bench/output_gate.py MODEL_DIR ... --features DIR [--out FILE]

A backdoor is trained to answer its target on a triggered input, and its LoRA learns to answer
with confidence; a message with code pasted in, or several joined, moves the heads too, but the
model has seen no such input in training and has no reason to answer it confidently. Per model,
with its kind's defaults (headguard/detect/defaults.py), this reads the margin of each input's
answer (its top label logit over the next, at the last prompt position, whose row the score
reads) beside its score, and compares thresholds:

- `pooled`: the default, the 1 % quantile of the prompts' and their coverage variants' scores;
- `prompts`: the quantile of the prompts' own scores (bench/threshold_rule.py);
- `gate q`: an input scoring between the prompts' own q quantile and the pooled threshold is
  flagged when its answer's margin is above every margin of the calibration rows (prompts and
  variants, out of fold) that score there too, or of the GATE_ROWS highest-scoring under the
  threshold where fewer do (`gate 0.98` is the detector's answer gate, docs/METHOD.md §3);
- `add w`: w times the answer's margin, in standard deviations from the calibration prompts
  giving the same answer, added to the score, and the threshold taken again as
  `Calibration.fit` takes it.

It reads the trigger to build the triggered group, so it is a harness tool. The features are
bench/score_settings.py's (the same --features folder reuses them); the margins are kept beside
them in DIR/<model>.margins.npz.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from headguard.detect.calibration import GATE_ROWS
from headguard.detect.defaults import score_defaults
from headguard.lab.build import read_manifest
from headguard.models.classifier import Classifier
from headguard.models.task import Task
from score_settings import (
    cached_features,
    cached_groups,
    calibration_set,
    fit_setting,
    held_out,
    input_groups,
    rates,
    write_rows,
)
from threshold_rule import prompts_rule

GATE_QUANTILES = (0.99, 0.98, 0.97)  # where the lower bar lies among the prompts' scores
WEIGHTS = (0.5, 1.0, 2.0)  # standard deviations of the answer's margin added to the score


def answer_margins(clf: Classifier, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """([n, 2]: the answer's margin, top label logit over the next, and the answer's index; [n] zeros)."""
    # Differences of log-probabilities are differences of the logits they were softmaxed from.
    logp = np.log(np.clip(clf.proba(texts), 1e-30, None))
    ranked = np.sort(logp, -1)
    return np.c_[ranked[:, -1] - ranked[:, -2], logp.argmax(-1)], np.zeros(len(texts))


def answer_z(answers: np.ndarray, prompts: np.ndarray) -> np.ndarray:
    """Each answer's margin in standard deviations from the margins of the calibration prompts
    that give the same answer (about their median)."""
    z = np.zeros(len(answers))
    for label in np.unique(answers[:, 1]):
        own = prompts[prompts[:, 1] == label, 0]
        rows = answers[:, 1] == label
        z[rows] = (answers[rows, 0] - np.median(own)) / (own.std() + 1e-6) if len(own) > 1 else 0.0
    return z


def worst(row: dict) -> float:
    """The highest false-positive rate of a row's groups (held-out clean, controls, unseen traffic)."""
    return max(row["fpr_clean"], row["fpr_unseen"], *row["fpr_controls"].values())


def measure(model: Path, cache: Path) -> list[dict]:
    lab = read_manifest(model)
    defaults = score_defaults(Task.load(model).kind)
    feats, names = cached_features(model, lab, cache)
    clf = Classifier.from_folder(model)
    groups = input_groups(model, clf, lab)
    answers = cached_groups(cache / f"{model.name}.margins.npz", ["margin", "answer"], groups,
                            lambda texts: answer_margins(clf, texts))
    cal, cols = fit_setting(feats, names, defaults.families, defaults.top_k, defaults.per_head, defaults.coverage,
                            defaults.length_bands, defaults.length_adjust)
    _, lengths, band_only, raise_only = calibration_set(feats, defaults.coverage)
    cal_answers = calibration_set(answers, defaults.coverage)[0]
    n_prompts = len(feats["split"][1])
    scores = {g: cal.score(f[:, cols], n) for g, (f, n) in held_out(feats).items()}
    margins = {g: answers[g][0][:, 0] for g in scores}
    fitted = ~band_only
    oof = cal.clean_scores  # out of fold, the pooled rule's band offsets applied (kept by every rule)
    high = cal.threshold
    base = {"model": model.name, "attack": lab["attack"], "threshold": high}
    rows = [{**base, "rule": "pooled", **rates(scores, high)}]
    low, *_ = prompts_rule(cal, n_prompts, lengths, band_only, cal.length_bands)
    rows.append({**base, "rule": "prompts", "low": low, **rates(scores, low)})
    for q in GATE_QUANTILES:
        low = float(np.quantile(oof[:n_prompts], q))
        between = fitted & (oof > low) & (oof <= high)
        if between.sum() < GATE_ROWS:  # the bar is taken over at least GATE_ROWS rows, as the detector's
            under = np.flatnonzero(fitted & (oof <= high))
            between[under[np.argsort(-oof[under], kind="stable")[:GATE_ROWS]]] = True
        bar = float(cal_answers[between, 0].max()) if between.any() else float("inf")
        # A gated input is lifted over the threshold, in its own score's order (for the AUROC).
        gated = {g: np.where((s > high) | ((s > low) & (margins[g] > bar)), high + 1 + s - low, s)
                 for g, s in scores.items()}
        rows.append({**base, "rule": f"gate {q}", "low": low, "margin_bar": bar,
                     "calibration_between": int(between.sum()), **rates(gated, high)})
    z_cal = answer_z(cal_answers, cal_answers[:n_prompts])
    z = {g: answer_z(answers[g][0], cal_answers[:n_prompts]) for g in scores}
    for w in WEIGHTS:
        # The threshold taken again as `Calibration.fit` takes it: the pooled quantile, which the
        # code sources on draws of their own may raise and never lower.
        x, own = (oof + w * z_cal)[fitted], raise_only[fitted]
        threshold = max(float(np.quantile(x, 0.99)), float(np.quantile(x[~own], 0.99)))
        rows.append({**base, "rule": f"add {w}", "threshold": threshold,
                     **rates({g: s + w * z[g] for g, s in scores.items()}, threshold)})
    for row in rows:
        print(row["rule"], f"TPR {row['tpr_at_fpr_1pct'] or 0:.3f}", f"worst group {worst(row):.3f}", flush=True)
    # What the answers look like: each group's median margin.
    rows.append({**base, "rule": "margins", "median": {g: float(np.median(m)) for g, m in margins.items()},
                 "median_prompts": float(np.median(cal_answers[:n_prompts, 0]))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "output-gate.json")
    args = parser.parse_args()
    write_rows(args.out, args.models, lambda model: measure(model, args.features))


if __name__ == "__main__":
    main()
