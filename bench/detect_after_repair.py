"""Detection on repaired models: with a patch applied and the detector calibrated anew, does the
guard still tell triggered inputs from clean ones? That depends on which heads the repair trained
and which heads collapse on the trigger (docs/BENCHMARKS.md, "Detection after repair").

    python bench/detect_after_repair.py MODEL_DIR [--variants none,default,random,prune] [--seeds 0,1,2]

Run bench/repair.py first with the same variants and seeds: this takes the patches it left in its
work folder and runs `headguard lab eval --patch P --defense headguard` on each (the detector
calibrated anew on the repaired model); variant `none` is the unpatched model (once, as seed 0).
Writes bench/results/<model>.after-<variant>-s<seed>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from headguard.lab.evaluate import EvalConfig, evaluate
from repair import RESULTS, prepare


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--variants", default="none,default,random,prune")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    cal, _, _ = prepare(args.model)  # the work folder bench/repair.py wrote its patches to
    variants = args.variants.split(",")
    runs = [("none", 0, None)] if "none" in variants else []
    runs += [(v, int(s), cal.parent / f"patch-{v}-s{s}") for v in variants if v != "none"
             for s in args.seeds.split(",")]
    missing = [str(p) for _, _, p in runs if p is not None and not p.exists()]
    if missing:
        print(f"no patch at {', '.join(missing)}: run bench/repair.py with these variants and seeds first",
              file=sys.stderr)
        return 2
    args.results.mkdir(parents=True, exist_ok=True)
    for variant, seed, patch in runs:
        report = evaluate(EvalConfig(model=args.model, defense="headguard", patch=patch))
        report["variant"], report["seed"] = variant, seed
        out = args.results / f"{args.model.name}.after-{variant}-s{seed}.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
        d = report["detection"]
        print(f"{variant} s{seed}: ASR {report['attack_success_rate']:.3f} CA {report['clean_accuracy']:.3f} "
              f"AUROC {d['auroc']:.3f} TPR@1% {d['tpr_at_fpr_1pct']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
