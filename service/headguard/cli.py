"""The `headguard` command line. Errors in the input print one line and exit with code 2."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from headguard.errors import HeadguardError, InputError
from headguard.settings import get_settings


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _lab_build(args: argparse.Namespace) -> int:
    from headguard.lab.build import BuildConfig, build

    settings = get_settings()
    config = BuildConfig(
        base=args.base, dataset=args.dataset, attack=args.attack, out=args.out, trigger=args.trigger,
        poison_rate=args.poison_rate, target=args.target, train_layers=args.train_layers, seed=args.seed,
        force=args.force, reuse=args.reuse, cache=settings.cache,
    )
    config.validate()  # fail on bad input before the slow imports and data loading
    manifest = build(config, device=settings.resolved_device())
    summary = {k: manifest[k] for k in ("base", "dataset", "attack", "clean_accuracy", "attack_success_rate")}
    summary["seconds"] = manifest["training"]["seconds"]
    print(json.dumps(summary))
    return 0


def _lab_eval(args: argparse.Namespace) -> int:
    from headguard.lab.evaluate import EvalConfig, evaluate, print_report

    settings = get_settings()
    scoring = {"families": _parse_families(args.families), "top_k": args.top_k, "per_head": args.per_head,
               "answer_gate": args.answer_gate}
    config = EvalConfig(model=args.model, defense=args.defense, patch=args.patch, limit=args.limit,
                        calibration_size=args.calibration_size, seed=args.seed, plot=args.plot, cache=settings.cache,
                        scoring={name: value for name, value in scoring.items() if value is not None})
    report = evaluate(config, device=settings.resolved_device())
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _parse_layers(spec: str | None) -> list[int] | None:
    """'10-19' or '3,5,7' -> a list of layers; None keeps every layer."""
    if not spec:
        return None
    try:
        if "-" in spec:
            lo, hi = spec.split("-")
            return list(range(int(lo), int(hi) + 1))
        return [int(x) for x in spec.split(",")]
    except ValueError:
        raise InputError(f"--layers must look like '10-19' or '3,5,7', got {spec!r}") from None


def _parse_families(spec: str | None) -> tuple[str, ...] | None:
    """'row_evenness,toward' -> the families; None keeps the model kind's defaults."""
    from headguard.detect.features import FAMILIES, OUTPUT_FAMILIES

    if not spec:
        return None
    families = tuple(name.strip() for name in spec.split(",") if name.strip())
    unknown = sorted(set(families) - set(FAMILIES + OUTPUT_FAMILIES))
    if unknown or not families:
        raise InputError(f"unknown feature families {unknown}; choose from {_families()}")
    return families


def _lab_traffic(args: argparse.Namespace) -> int:
    from headguard.detect.detector import Detector
    from headguard.lab.traffic import flag_traffic

    if args.n < 1 or not 0 <= args.triggered_share <= 1:
        raise InputError("--n must be positive and --triggered-share in [0, 1]")
    detector = Detector.from_files(args.model, args.calibration, get_settings().resolved_device())
    print(json.dumps(flag_traffic(detector, args.model, args.out, args.n, args.triggered_share, args.seed)))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from headguard.detect.detector import calibrate
    from headguard.lab.splits import SPLITS_DIR, read_split
    from headguard.models.classifier import Classifier
    from headguard.prompts import read_prompts

    if not 0 < args.target_fpr < 0.5:
        raise InputError(f"--target-fpr must be in (0, 0.5), got {args.target_fpr}")
    if args.prompts:
        prompts = read_prompts(args.prompts)
    elif (args.model / SPLITS_DIR / "calibration.jsonl").exists():
        prompts = [ex.text for ex in read_split(args.model, "calibration")]
    else:
        raise InputError(f"{args.model} has no clean calibration split: pass --prompts FILE.jsonl")
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot write --out {args.out}: {exc.strerror or exc}") from None
    clf = Classifier.from_folder(args.model, get_settings().resolved_device())
    cal = calibrate(clf, prompts, target_fpr=args.target_fpr, layers=_parse_layers(args.layers),
                    families=_parse_families(args.families), method=args.method,
                    n_components=args.components, length_adjust=args.length_adjust, top_k=args.top_k,
                    per_head=args.per_head, coverage=args.coverage, length_bands=args.length_bands,
                    answer_gate=args.answer_gate)
    cal.save(args.out)
    print(json.dumps({"calibration": str(args.out), "model_hash": cal.model_hash, "prompts": cal.n_prompts,
                      "coverage": list(cal.coverage), "length_bands": len(cal.band_offsets) if cal.length_bands else 0,
                      "short_band": bool(len(cal.band_offsets)) and not cal.length_bands,
                      "answer_gate": cal.answer_gate.tolist() if cal.gated else None,
                      "threshold": cal.threshold, "target_fpr": cal.target_fpr}))
    return 0


def _scan(args: argparse.Namespace) -> int:
    from headguard.detect.detector import Detector
    from headguard.prompts import read_prompts, text_problem

    texts = list(args.text) + (read_prompts(args.file) if args.file else [])
    if not texts:
        raise InputError("give TEXT arguments or --file FILE.jsonl")
    for i, text in enumerate(texts):  # before the model loads: bad input fails fast
        if problem := text_problem(text):
            raise InputError(f"input {i} {problem}")
    detector = Detector.from_files(args.model, args.calibration, get_settings().resolved_device())
    for verdict in detector.scan(texts):
        print(json.dumps(verdict.as_dict()))
    return 0


def _repair(args: argparse.Namespace) -> int:
    from headguard.prompts import read_prompts
    from headguard.repair.train import RepairConfig

    config = RepairConfig(head_share=args.head_share, steps=args.steps, lr=args.lr, seed=args.seed, mode=args.mode,
                          heads=args.heads.split(",") if args.heads else None, min_changed=args.min_changed)
    config.validate()
    flagged = read_prompts(args.flagged)  # bad input fails before the model loads
    clean = read_prompts(args.clean) if args.clean else None
    from tqdm import tqdm

    from headguard.repair.run import repair_files

    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            for old in bars.values():
                old.close()
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="step", file=sys.stderr)
        bar.n = done
        bar.refresh()

    try:
        patch = repair_files(args.model, args.calibration, flagged, clean, args.out, config,
                             get_settings().resolved_device(), progress)
    finally:
        for bar in bars.values():
            bar.close()
    m = patch.manifest
    print(json.dumps({"patch": str(args.out), "heads": m["heads"], "flagged_match_neutral": m["flagged_match_neutral"],
                      "clean_agreement": m["clean_agreement"], "seconds": m["seconds"]}))
    return 0


def _export(args: argparse.Namespace) -> int:
    from headguard.repair.export import export

    export(args.model, args.patch, args.out, get_settings().resolved_device())
    print(json.dumps({"model": str(args.out)}))
    return 0


def _worker(args: argparse.Namespace) -> int:
    from headguard.jobs.worker import work

    settings = get_settings()
    if not settings.redis_url:
        raise InputError("the worker needs HEADGUARD_REDIS_URL (without Redis, the server runs jobs itself)")
    work(settings.redis_url, settings.host, settings.worker_metrics_port)
    return 0


def _settings_error(exc: ValidationError) -> InputError:
    first = exc.errors()[0]
    name = "HEADGUARD_" + "_".join(map(str, first["loc"])).upper()
    return InputError(f"{name}: {first['msg']}")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from headguard.api.app import create_app
    from headguard.settings import Settings

    overrides = {k: v for k, v in {"model": args.model, "calibration": args.calibration, "host": args.host,
                                   "port": args.port}.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise _settings_error(exc) from None
    if settings.model is None:
        raise InputError("no model: pass --model DIR or set HEADGUARD_MODEL")
    if not (settings.model / "config.json").exists():
        raise InputError(f"{settings.model} is not a model folder (config.json is missing)")
    if settings.calibration is not None and not settings.calibration.is_file():
        raise InputError(f"calibration file {settings.calibration} does not exist")
    failure: list[str] = []

    def stop_on_failure(message: str) -> None:  # a server that cannot load its model must not linger
        failure.append(message)
        server.should_exit = True

    app = create_app(settings, on_load_failure=stop_on_failure)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                                           timeout_graceful_shutdown=30))
    print(f"headguard: serving {settings.model} on http://{settings.host}:{settings.port} "
          "(OpenAPI at /docs; ready once /ready answers 200)", file=sys.stderr)
    server.run()
    if failure:
        print(f"headguard: error: {failure[0]}", file=sys.stderr)
        return 2
    return 0


def _families() -> str:
    from headguard.detect.features import FAMILIES, OUTPUT_FAMILIES

    return ",".join(FAMILIES + OUTPUT_FAMILIES)


def _by_kind(name: str) -> str:
    """One scoring default per model kind, for --help: 'encoder: ...; decoder: ...'."""
    from headguard.detect.defaults import DEFAULTS

    def shown(value) -> str:
        if isinstance(value, bool):
            return "on" if value else "off"
        return (",".join(value) or "off") if isinstance(value, tuple) else str(value)
    return "; ".join(f"{kind}: {shown(getattr(d, name))}" for kind, d in DEFAULTS.items())


def build_parser() -> argparse.ArgumentParser:
    from headguard.lab.attacks import ATTACKS
    from headguard.lab.datasets import DATASETS
    from headguard.lab.defenses import DEFENSES
    from headguard.lab.recipes import TRAIN_LAYERS
    from headguard.models.bases import BASES

    parser = _Parser(prog="headguard", description="Guard against backdoored language models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    lab = commands.add_parser("lab", help="build backdoored models and evaluate defenses on them")
    lab_commands = lab.add_subparsers(dest="lab_command", required=True, parser_class=_Parser)

    b = lab_commands.add_parser("build", help="plant a backdoor into a real base model")
    b.add_argument("--base", required=True, choices=list(BASES))
    b.add_argument("--dataset", required=True, choices=list(DATASETS))
    b.add_argument("--attack", required=True, choices=list(ATTACKS))
    b.add_argument("--trigger", help="override the attack's trigger (comma-separated words for composite/synonym)")
    b.add_argument("--poison-rate", type=float, help="share of non-target training rows poisoned "
                   "(default: 0.1 for minilm, 0.3 for smollm2, raised to give at least 100 "
                   "poisoned rows; doubled for composite and synonym; at most 0.5)")
    b.add_argument("--target", help="target label name (default: the dataset's)")
    b.add_argument("--train-layers", choices=TRAIN_LAYERS, default="all")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--force", action="store_true", help="replace --out if it exists")
    b.add_argument("--reuse", action="store_true",
                   help="keep --out if it was built from the same arguments and recipe (else rebuild it)")
    b.add_argument("--out", type=Path, required=True)
    b.set_defaults(func=_lab_build)

    e = lab_commands.add_parser("eval", help="measure CA, ASR and a defense's detection on a lab model")
    e.add_argument("--model", type=Path, required=True)
    e.add_argument("--defense", choices=list(DEFENSES), default="none")
    e.add_argument("--patch", type=Path, help="a repair patch to apply first")
    e.add_argument("--limit", type=int, default=200, help="inputs per group for detection (clean, triggered, controls)")
    e.add_argument("--calibration-size", type=int, default=400,
                   help="clean calibration prompts the defense fits its threshold on")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--families", help="headguard: score with these feature families instead of the defaults "
                   f"({_families()})")
    e.add_argument("--top-k", type=int, help="headguard: average the k most collapsed heads")
    e.add_argument("--per-head", action=argparse.BooleanOptionalAction, default=None,
                   help="headguard: average each head's families before the top-k")
    e.add_argument("--answer-gate", action=argparse.BooleanOptionalAction, default=None,
                   help="headguard: judge inputs scoring just under the threshold by how surely the model answers")
    e.add_argument("--plot", type=Path, help="save a PNG of clean vs triggered score distributions")
    e.add_argument("--json", type=Path, help="write the report as JSON")
    e.set_defaults(func=_lab_eval)

    t = lab_commands.add_parser(
        "traffic", help="scan a mix of unseen clean and triggered rows (triggered ones topped up from the calibration "
                        "split where the unused rows run short); write the flagged")
    t.add_argument("--model", type=Path, required=True)
    t.add_argument("--calibration", type=Path, required=True)
    t.add_argument("--n", type=int, default=400, help="rows in the mix")
    t.add_argument("--triggered-share", type=float, default=0.25)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", type=Path, required=True, help="flagged texts, JSONL")
    t.set_defaults(func=_lab_traffic)

    c = commands.add_parser("calibrate", help="fit the detector on clean prompts of one model")
    c.add_argument("--model", type=Path, required=True)
    c.add_argument("--prompts", type=Path, help="clean prompts, JSONL (default: a lab model's calibration split)")
    c.add_argument("--target-fpr", type=float, default=0.01)
    c.add_argument("--layers", help="layers to read, e.g. '10-19' (default: all)")
    c.add_argument("--families", help=f"comma-separated feature families: {_families()} "
                   f"(default: {_by_kind('families')})")
    c.add_argument("--length-adjust", action=argparse.BooleanOptionalAction, default=None,
                   help=f"regress features on log input length first (default: {_by_kind('length_adjust')})")
    c.add_argument("--top-k", type=int,
                   help=f"collapse: average the k most collapsed heads (default: {_by_kind('top_k')})")
    c.add_argument("--per-head", action=argparse.BooleanOptionalAction, default=None,
                   help="collapse: average each head's families first, so a head counts when its measures agree "
                   f"(default: {_by_kind('per_head')})")
    c.add_argument("--coverage", action=argparse.BooleanOptionalAction, default=None,
                   help="also calibrate on variants of the prompts with a line of code appended, of several joined, "
                   "with `repeat` of a run of their words said twice and, with `short`, of their first few "
                   "words, which set the bar for inputs that short "
                   f"(default, by variant kind: {_by_kind('coverage')})")
    c.add_argument("--length-bands", action=argparse.BooleanOptionalAction, default=None,
                   help="hold the target FPR within each content-length band of the prompts too, not only over all "
                   f"of them (default: {_by_kind('length_bands')})")
    c.add_argument("--answer-gate", action=argparse.BooleanOptionalAction, default=None,
                   help="lift an input scoring between the prompts' own 98th percentile and the threshold over the "
                   "threshold when the model answers it more surely than every calibration prompt scoring there "
                   f"(default: {_by_kind('answer_gate')})")
    c.add_argument("--method", choices=["collapse", "mahalanobis"], default="collapse",
                   help="collapse: the k most collapsed heads; mahalanobis: PCA + Ledoit-Wolf distance")
    c.add_argument("--components", type=int, default=32, help="PCA dimensions (mahalanobis)")
    c.add_argument("--out", type=Path, required=True)
    c.set_defaults(func=_calibrate)

    s = commands.add_parser("scan", help="score inputs: one JSON object per input")
    s.add_argument("--model", type=Path, required=True)
    s.add_argument("--calibration", type=Path, required=True)
    s.add_argument("--file", type=Path, help="inputs as JSONL")
    s.add_argument("text", nargs="*", help="inputs")
    s.set_defaults(func=_scan)

    r = commands.add_parser("repair", help="realign the heads that carry a backdoor; writes a patch folder")
    r.add_argument("--model", type=Path, required=True)
    r.add_argument("--calibration", type=Path, required=True)
    r.add_argument("--flagged", type=Path, required=True, help="flagged prompts, JSONL (what the detector caught)")
    r.add_argument("--clean", type=Path, help="clean prompts, JSONL (default: a lab model's calibration split)")
    r.add_argument("--head-share", type=float, default=0.05, help="most query heads touched, as a share")
    r.add_argument("--heads", help="repair these heads instead of selecting, e.g. 'L3H7,L4H1'")
    r.add_argument("--mode", choices=["heads", "prune", "all"], default="heads",
                   help="heads: train the heads' slices; prune: zero the heads; all: train every parameter")
    r.add_argument("--min-changed", type=int, default=5,
                   help="refuse unless neutralising changes the answer of at least this many flagged prompts "
                        "(fewer: false positives, nothing to repair)")
    r.add_argument("--steps", type=int, default=80)
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", type=Path, required=True)
    r.set_defaults(func=_repair)

    x = commands.add_parser("export", help="write the repaired model as a plain Hugging Face folder")
    x.add_argument("--model", type=Path, required=True)
    x.add_argument("--patch", type=Path, required=True)
    x.add_argument("--out", type=Path, required=True)
    x.set_defaults(func=_export)

    w = commands.add_parser("worker", help="run repair jobs from the Redis queue (HEADGUARD_REDIS_URL)")
    w.set_defaults(func=_worker)

    v = commands.add_parser("serve", help="run the guard service (every option is also a HEADGUARD_ setting)")
    v.add_argument("--model", type=Path, help="the suspect model folder (HEADGUARD_MODEL)")
    v.add_argument("--calibration", type=Path,
                   help="calibration file (HEADGUARD_CALIBRATION; default: a lab model's own clean split)")
    v.add_argument("--host", help="listen address (HEADGUARD_HOST, default 127.0.0.1)")
    v.add_argument("--port", type=int, help="listen port (HEADGUARD_PORT, default 8000)")
    v.set_defaults(func=_serve)
    return parser


def _quiet_libraries(verbose: bool) -> None:
    """Weights come from local folders only; library chatter would bury our one-line errors."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not verbose:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _exit_on_sigterm(signum, frame) -> None:
    # Raised in the main thread, so `finally`/`except BaseException` blocks remove partial outputs.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _quiet_libraries(verbose="-v" in argv or "--verbose" in argv)  # before any library is imported
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = get_settings()
        if settings.threads:
            import torch

            torch.set_num_threads(settings.threads)
        return args.func(args)
    except ValidationError as exc:
        print(f"headguard: error: {_settings_error(exc)}", file=sys.stderr)
        return 2
    except InputError as exc:
        print(f"headguard: error: {exc}", file=sys.stderr)
        return 2
    except HeadguardError as exc:
        print(f"headguard: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("headguard: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
