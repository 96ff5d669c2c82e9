"""What neutralisation did to each flagged prompt: the words it removed and the answers before and after.

    .venv/bin/python bench/neutralised.py MODEL_DIR CAL FLAGGED.jsonl [--json OUT]

CAL and FLAGGED are a calibration and the flagged prompts of a traffic mix, e.g. the ones
bench/repair.py keeps under /tmp/headguard-bench-repair/<model>-<defaults>/. One line per flagged
prompt: whether it was neutralised, the model's answer on it and on its neutral prompt (the
repair trains only where they differ), the words removed, and the neutral prompt's start.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from headguard.detect.detector import Detector
from headguard.prompts import read_prompts
from headguard.repair.neutralise import neutralise
from headguard.repair.outputs import batched_logprobs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("calibration", type=Path)
    parser.add_argument("flagged", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    detector = Detector.from_files(args.model, args.calibration)
    items = neutralise(detector, read_prompts(args.flagged))
    answers = batched_logprobs(detector.clf, [it.text for it in items]).argmax(-1).tolist()
    neutral = batched_logprobs(detector.clf, [it.neutral for it in items]).argmax(-1).tolist()
    rows = [{"neutralised": bool(it.ok and it.removed), "answer": a, "neutral_answer": n, "widened": it.widened,
             "removed": it.removed, "neutral": it.neutral} for it, a, n in zip(items, answers, neutral, strict=True)]
    for r in rows:
        mark = "changed" if r["answer"] != r["neutral_answer"] else "same"
        print(f"{'ok ' if r['neutralised'] else 'NOT'} {mark:7} {r['answer']}->{r['neutral_answer']} "
              f"{' '.join(r['removed'])[:60]:60} | {r['neutral'][:80]!r}")
    done = [r for r in rows if r["neutralised"]]
    print(f"{len(rows)} flagged, {len(done)} neutralised, "
          f"{sum(r['answer'] != r['neutral_answer'] for r in done)} of them answer otherwise")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
