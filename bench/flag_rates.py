"""Share of triggered messages a calibration flags, by the split they come from.

    .venv/bin/python bench/flag_rates.py MODEL_DIR CALIBRATION [--n 100] [--seed 0]

For the non-target rows of the test split (what `lab eval` plants the trigger in) and of the
calibration split (what `lab traffic` tops its triggered rows up from): the first `n` of each,
with the trigger planted as `lab eval` plants it, scanned with and without it. Tells whether the
top-up's source changes what the detector catches.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from headguard.detect.calibration import Calibration
from headguard.detect.detector import Detector
from headguard.lab.attacks import Attack
from headguard.lab.build import read_manifest
from headguard.lab.metrics import triggered
from headguard.lab.splits import read_split
from headguard.models.classifier import Classifier


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("calibration", type=Path)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    manifest = read_manifest(args.model)
    attack = Attack(manifest["attack"], tuple(manifest["triggers"]))
    calibration = Calibration.load(args.calibration)
    detector = Detector(Classifier.from_folder(args.model, "cpu"), calibration)
    for split in ("test", "calibration"):
        rows = [ex.text for ex in read_split(args.model, split) if ex.label != manifest["target_index"]][: args.n]
        inputs = {"triggered_flagged": triggered(attack, rows, args.seed), "clean_flagged": rows}
        shares = {name: sum(v.flagged for v in detector.scan(texts)) / len(rows) for name, texts in inputs.items()}
        print(json.dumps({"split": split, "n": len(rows), "threshold": calibration.threshold, **shares}), flush=True)


if __name__ == "__main__":
    main()
