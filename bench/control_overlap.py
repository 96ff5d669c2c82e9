"""Which specificity-control false positives a clean message already explains.

    .venv/bin/python bench/control_overlap.py MODEL_DIR CALIBRATION [--limit 200]

Every control `headguard lab eval` scores is made from the same held-out clean messages (a rare
word inserted, typos, the message twice, code appended, three others appended), so one odd message
can cross the threshold in several groups. Per control: how many of its inputs cross, and how many
of those come from a clean message that crosses too. Writes bench/results/<model>.overlap.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from detect_ablation import held_out_inputs
from headguard.detect.detector import Detector
from headguard.lab.build import read_manifest


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("calibration", type=Path)
    parser.add_argument("--limit", type=int, default=200, help="held-out clean messages, as `lab eval` takes them")
    args = parser.parse_args()
    detector = Detector.from_files(args.model, args.calibration)
    groups = held_out_inputs(args.model, read_manifest(args.model), args.limit)
    # Scores alone: `scan` would also build an explanation per input, which nothing here reads.
    clean_flagged = detector.scores(groups.pop("clean")) > detector.threshold
    groups.pop("triggered", None)
    report = {"model": args.model.name, "n": len(clean_flagged), "clean": int(clean_flagged.sum()), "controls": {}}
    for name, texts in groups.items():
        flagged = detector.scores(texts) > detector.threshold
        report["controls"][name] = {"flagged": int(flagged.sum()),
                                    "clean_flagged_too": int((flagged & clean_flagged).sum())}
    print(json.dumps(report))
    out = Path(__file__).parent / "results" / f"{args.model.name}.overlap.json"
    out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
