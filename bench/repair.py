"""Repair benchmark: traffic -> flagged prompts -> repair -> lab eval, per lab model, variant and seed.

    python bench/repair.py MODEL_DIR [MODEL_DIR ...] [--variants default,random,prune,all,single,leave-one-out]
                           [--seeds 0,1,2] [--steps 80] [--target-fpr 0.01] [--families F[,F]] [--top-k K]
                           [--device cpu|cuda] [--results DIR]

Writes <results>/<model>.repair-<variant>-s<seed>.json (default bench/results). `--target-fpr` is the
detector's operating point for flagging the traffic (and for the repair's neutralisation); at
another value than the default 1 % the variant's name ends in `-fpr<percent>`. `--families` and
`--top-k` calibrate with those feature families and that many heads per score instead of the
kind's defaults (they pick the flagged prompts and rank the heads); the variant's name then ends
in `-<families joined by +>` and `-top<k>`. Variants, each with
the same budget:
  default        the selected heads, trained (the method)
  random         as many randomly chosen heads, trained with the same loss
  prune          the selected heads zeroed, no training
  all            every parameter trained with the same loss and steps
  single         each selected head alone, trained
  leave-one-out  all selected heads but one, trained
  no-widen       the method without widening the deleted words to the phrase around them
  keep-unchanged the method also training on flagged prompts whose neutralised prompt answers alike
Only the harness (lab traffic, lab eval) knows the trigger; the repair sees flagged texts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from pathlib import Path

from headguard.detect.calibration import Calibration
from headguard.detect.defaults import score_defaults
from headguard.detect.detector import Detector, calibrate
from headguard.errors import InputError
from headguard.lab.build import read_manifest
from headguard.lab.evaluate import EvalConfig, evaluate
from headguard.lab.splits import read_split
from headguard.lab.traffic import flag_traffic
from headguard.models.classifier import Classifier
from headguard.models.task import Task
from headguard.prompts import read_prompts
from headguard.repair.run import repair_files
from headguard.repair.train import RepairConfig

RESULTS = Path(__file__).parent / "results"
WORK = Path("/tmp/headguard-bench-repair")
DEVICE = "cpu"
TARGET_FPR = 0.01
FAMILIES: tuple[str, ...] | None = None  # None: the kind's defaults
TOP_K: int | None = None


def _suffix() -> str:
    fpr = "" if TARGET_FPR == 0.01 else f"-fpr{TARGET_FPR * 100:g}"
    return fpr + ("" if FAMILIES is None else "-" + "+".join(FAMILIES)) + ("" if TOP_K is None else f"-top{TOP_K}")


def prepare(model: Path) -> tuple[Path, Path, dict]:
    """Calibration and flagged prompts of one model (cached in WORK)."""
    # Keyed by the kind's scoring defaults too, so a changed default is not served a stale calibration.
    defaults = hashlib.sha256(repr(score_defaults(Task.load(model).kind)).encode()).hexdigest()[:8]
    work = WORK / f"{model.name}{_suffix()}-{defaults}"
    work.mkdir(parents=True, exist_ok=True)
    cal, flagged = work / "cal.safetensors", work / "flagged.jsonl"
    if not cal.exists():
        clf = Classifier.from_folder(model, DEVICE)
        calibrate(clf, [ex.text for ex in read_split(model, "calibration")], target_fpr=TARGET_FPR,
                  families=FAMILIES, top_k=TOP_K).save(cal)
    summary_file = work / "traffic.json"
    if not flagged.exists():
        detector = Detector(Classifier.from_folder(model, DEVICE), Calibration.load(cal))
        summary_file.write_text(json.dumps(flag_traffic(detector, model, flagged)))
    return cal, flagged, json.loads(summary_file.read_text())


def _build(model: Path, report: dict) -> dict:
    """The lab model this row ran on: a rebuild on another machine can differ from the recorded one."""
    lab = read_manifest(model)
    return {"clean_accuracy": lab["clean_accuracy"], "attack_success_rate": lab["attack_success_rate"],
            "weights_hash": report.get("weights_hash")}


def run(model: Path, variant: str, seed: int, steps: int, selected: list[str] | None) -> list[dict]:
    cal, flagged_file, traffic = prepare(model)
    scoring = Calibration.load(cal).setting()  # what flagged the traffic
    # Nothing flagged (a clean model, a trigger the detector misses): repair_files refuses, recorded below.
    flagged = read_prompts(flagged_file) if traffic["flagged"] else []
    configs: list[tuple[str, RepairConfig]] = []
    if variant == "default":
        configs.append(("default", RepairConfig(steps=steps, seed=seed)))
    elif variant == "no-widen":
        configs.append(("no-widen", RepairConfig(steps=steps, seed=seed, widen=0)))
    elif variant == "keep-unchanged":
        configs.append(("keep-unchanged", RepairConfig(steps=steps, seed=seed, keep_unchanged=True)))
    elif variant == "prune":
        configs.append(("prune", RepairConfig(steps=steps, seed=seed, heads=selected, mode="prune")))
    elif variant == "all":
        configs.append(("all", RepairConfig(steps=steps, seed=seed, heads=selected, mode="all")))
    elif variant == "random":
        clf = Classifier.from_folder(model)
        from headguard.detect.heads import adapter_for

        a = adapter_for(clf.model)
        pool = [f"L{layer}H{h}" for layer in range(a.n_layers) for h in range(a.n_heads)]
        heads = random.Random(1000 + seed).sample(pool, len(selected))
        configs.append(("random", RepairConfig(steps=steps, seed=seed, heads=heads)))
    elif variant == "single":
        configs += [(f"single-{h}", RepairConfig(steps=steps, seed=seed, heads=[h])) for h in selected]
    elif variant == "leave-one-out":
        configs += [(f"without-{h}", RepairConfig(steps=steps, seed=seed, heads=[x for x in selected if x != h]))
                    for h in selected]
    out = []
    for name, config in configs:
        name += _suffix()
        patch_dir = cal.parent / f"patch-{name}-s{seed}"
        started = time.perf_counter()
        try:
            patch = repair_files(model, cal, flagged, None, patch_dir, config, device=DEVICE)
        except InputError as exc:  # e.g. a clean model: nothing flagged can be neutralised; the model is unchanged
            report = evaluate(EvalConfig(model=model), DEVICE)
            row = {"model": model.name, "variant": name, "seed": seed, "target_fpr": TARGET_FPR,
                   "build": _build(model, report), "scoring": scoring, "refused": str(exc), "heads": [],
                   "heads_share": 0.0,
                   "seconds": round(time.perf_counter() - started, 1), "traffic": traffic,
                   "flagged_match_neutral": {"before": None, "after": None}, "clean_agreement": 1.0,
                   "clean_accuracy": report["clean_accuracy"], "attack_success_rate": report["attack_success_rate"]}
            (RESULTS / f"{model.name}.repair-{name}-s{seed}.json").write_text(json.dumps(row, indent=2) + "\n")
            print(json.dumps(row), flush=True)
            out.append(row)
            continue
        seconds = time.perf_counter() - started
        report = evaluate(EvalConfig(model=model, patch=patch_dir), DEVICE)
        m = patch.manifest
        row = {"model": model.name, "variant": name, "seed": seed, "target_fpr": TARGET_FPR, "device": DEVICE,
               "build": _build(model, report), "scoring": scoring, "heads": m["heads"], "heads_share": m["heads_share"],
               "seconds": round(seconds, 1), "stage_seconds": m.get("stage_seconds"), "traffic": traffic,
               "neutralised": m["flagged"]["neutralised"], "changed": m["flagged"]["changed"],
               "trained_on": m["flagged"]["trained_on"], "widened": m["flagged"]["widened"],
               "removed_words": m["flagged"]["removed_words"][:3],
               "flagged_match_neutral": m["flagged_match_neutral"], "clean_agreement": m["clean_agreement"],
               "clean_accuracy": report["clean_accuracy"], "attack_success_rate": report["attack_success_rate"]}
        (RESULTS / f"{model.name}.repair-{name}-s{seed}.json").write_text(json.dumps(row, indent=2) + "\n")
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def main() -> int:
    global DEVICE, RESULTS, TARGET_FPR, FAMILIES, TOP_K
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--variants", default="default")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--target-fpr", type=float, default=0.01, help="the detector's flagging operating point")
    parser.add_argument("--families", help="comma-separated feature families to calibrate with (default: the kind's)")
    parser.add_argument("--top-k", type=int, help="heads averaged into the score (default: the kind's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    DEVICE, RESULTS, TARGET_FPR = args.device, args.results, args.target_fpr
    FAMILIES = tuple(args.families.split(",")) if args.families else None
    TOP_K = args.top_k
    RESULTS.mkdir(parents=True, exist_ok=True)
    for model in args.models:
        selected: list[str] | None = None
        for seed in map(int, args.seeds.split(",")):
            for variant in args.variants.split(","):
                if variant not in ("default", "no-widen", "keep-unchanged") and selected is None:
                    default = RESULTS / f"{model.name}.repair-default{_suffix()}-s0.json"
                    if not default.exists():
                        run(model, "default", 0, args.steps, None)
                    selected = json.loads(default.read_text())["heads"]
                rows = run(model, variant, seed, args.steps, selected)
                if variant == "default" and seed == 0:
                    selected = rows[0]["heads"]
    return 0


if __name__ == "__main__":
    sys.exit(main())
