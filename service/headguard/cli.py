"""The `headguard` command line. Errors in the input print one line and exit with code 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

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
        force=args.force, cache=settings.cache,
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
    config = EvalConfig(model=args.model, defense=args.defense, patch=args.patch, limit=args.limit,
                        seed=args.seed, plot=args.plot, cache=settings.cache)
    report = evaluate(config, device=settings.resolved_device())
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from headguard.lab.attacks import ATTACKS
    from headguard.lab.build import TRAIN_LAYERS
    from headguard.lab.datasets import DATASETS
    from headguard.lab.defenses import DEFENSES
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
                   "(default: 0.1 for minilm, 0.2 for smollm2)")
    b.add_argument("--target", help="target label name (default: the dataset's)")
    b.add_argument("--train-layers", choices=TRAIN_LAYERS, default="all")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--force", action="store_true", help="replace --out if it exists")
    b.add_argument("--out", type=Path, required=True)
    b.set_defaults(func=_lab_build)

    e = lab_commands.add_parser("eval", help="measure CA, ASR and a defense's detection on a lab model")
    e.add_argument("--model", type=Path, required=True)
    e.add_argument("--defense", choices=list(DEFENSES), default="none")
    e.add_argument("--patch", type=Path, help="a repair patch to apply first")
    e.add_argument("--limit", type=int, default=200, help="inputs per group for detection (clean, triggered, controls)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--plot", type=Path, help="save a PNG of clean vs triggered score distributions")
    e.add_argument("--json", type=Path, help="write the report as JSON")
    e.set_defaults(func=_lab_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    try:
        return args.func(args)
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
