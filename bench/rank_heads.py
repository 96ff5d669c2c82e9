"""Head ranking's cost: the repair's importance stage, computing only the blocks from each ablated
head's layer on, against rerunning the whole model per candidate (how it ran before).

    .venv/bin/python bench/rank_heads.py MODEL_DIR CAL FLAGGED.jsonl [--repeats 1]

The candidates are the repair's: the 3 x budget heads of strongest drive on the flagged prompts,
ranked on up to 64 of them. The target is the model's output on as many clean calibration prompts
(any fixed distribution times the same; the figures must agree between the two ways). Prints one
JSON object: seconds each way, the candidates' layers, and the largest difference in importance.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from headguard.detect.calibration import Calibration
from headguard.detect.detector import Detector
from headguard.lab.splits import read_split
from headguard.models.classifier import Classifier
from headguard.prompts import read_prompts
from headguard.repair.outputs import batched_logprobs, kl
from headguard.repair.select import ablated, head_budget, head_drive, head_importance
from headguard.repair.train import RepairConfig


def full_reruns(clf, detector, heads, flagged, target) -> dict:
    """The previous way: the whole model once per candidate."""
    base = float(kl(target, batched_logprobs(clf, flagged)))
    out = {}
    for layer, head in heads:
        with ablated(detector, layer, head):
            out[(layer, head)] = base - float(kl(target, batched_logprobs(clf, flagged)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("calibration", type=Path)
    parser.add_argument("flagged", type=Path)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    clf = Classifier.from_folder(args.model)
    detector = Detector(clf, Calibration.load(args.calibration))
    flagged = read_prompts(args.flagged)[:64]
    clean = [ex.text for ex in read_split(args.model, "calibration")]
    adapter = detector.scorer.adapter
    config = RepairConfig()  # the repair's defaults
    budget = head_budget(adapter.n_layers, adapter.n_heads, config.head_share)
    drive = head_drive(detector, flagged, clean[:200])
    heads = sorted(drive, key=drive.get, reverse=True)[: config.candidates * budget]
    target = batched_logprobs(clf, clean[: len(flagged)])

    seconds: dict[str, list[float]] = {"replayed": [], "full_reruns": []}
    results = {}
    for _ in range(args.repeats):  # the two ways take turns
        for name, fn in (("replayed", head_importance), ("full_reruns", full_reruns)):
            started = time.perf_counter()
            results[name] = fn(clf, detector, heads, flagged, target)
            seconds[name].append(round(time.perf_counter() - started, 1))
    print(json.dumps({
        "model": args.model.name, "flagged": len(flagged), "candidates": len(heads), "n_layers": adapter.n_layers,
        "candidate_layers": sorted(layer for layer, _ in heads), "seconds": seconds,
        "max_abs_difference": max(abs(results["replayed"][h] - results["full_reruns"][h]) for h in heads),
    }))


if __name__ == "__main__":
    main()
