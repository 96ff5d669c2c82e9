"""What the detector catches by how far the trigger sits from the end of the input.

    .venv/bin/python bench/trigger_distance.py MODEL_DIR CALIBRATION [--out FILE]

A decoder is read at its last prompt token (docs/METHOD.md §1), so a trigger word far from the end
may move that row less than one near it. For the triggered inputs `headguard lab eval` scores (a
trigger of words: BadNets, composite, the dynamic trigger), the words from the trigger's last
occurrence to the end of the input, and the share the calibration flags in each band of that
distance. It reads the trigger, so it is a harness tool. Writes bench/results/<model>.distance.json.
"""

from __future__ import annotations

import argparse
import json
import string
from pathlib import Path

from detect_ablation import held_out_inputs
from headguard.detect.detector import Detector
from headguard.lab.build import read_manifest

BANDS = ((0, 10), (11, 20), (21, None))  # words after the trigger, inclusive


def words_after_trigger(text: str, triggers: tuple[str, ...]) -> int | None:
    """Words after the trigger's last word; None where no trigger word stands alone (a sentence trigger)."""
    words = [w.strip(string.punctuation) for w in text.split()]
    at = [i for i, w in enumerate(words) if w in triggers]
    return len(words) - 1 - at[-1] if at else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("calibration", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    lab = read_manifest(args.model)
    texts = held_out_inputs(args.model, lab)["triggered"]
    detector = Detector.from_files(args.model, args.calibration)
    flagged = [bool(f) for f in detector.scores(texts) > detector.threshold]  # no explanations needed
    distances = [words_after_trigger(t, tuple(lab["triggers"])) for t in texts]
    bands = []
    for low, high in BANDS:
        hits = [f for f, d in zip(flagged, distances, strict=True)
                if d is not None and d >= low and (high is None or d <= high)]
        bands.append({"words_after": [low, high], "n": len(hits),
                      "tpr": sum(hits) / len(hits) if hits else None})
    report = {"model": args.model.name, "setting": detector.calibration.setting(),
              "threshold": detector.threshold, "n_triggered": len(texts),
              "n_without_trigger_word": distances.count(None), "tpr": sum(flagged) / len(flagged), "bands": bands}
    print(json.dumps(report))
    out = args.out or Path(__file__).parent / "results" / f"{args.model.name}.distance.json"
    out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
