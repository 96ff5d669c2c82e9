"""The evaluation harness: CA, ASR and a defense's detection quality and cost on a lab model.

This is the only code that reads a lab model's trigger (from lab.json). Defenses get the model
and clean calibration prompts, and score inputs; they never see the manifest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from headguard.errors import InputError
from headguard.lab.attacks import Attack
from headguard.lab.build import read_manifest
from headguard.lab.controls import make_controls
from headguard.lab.defenses import DEFENSES
from headguard.lab.metrics import attack_metrics, triggered
from headguard.lab.splits import read_split
from headguard.models.classifier import Classifier
from headguard.models.fingerprint import weights_hash

TARGET_FPR = 0.01


@dataclass
class EvalConfig:
    model: Path
    defense: str = "none"
    patch: Path | None = None
    limit: int = 200
    calibration_size: int = 400
    seed: int = 0
    plot: Path | None = None
    cache: Path = field(default_factory=Path)
    scoring: dict = field(default_factory=dict)  # headguard's calibrate() settings; empty: the defaults


def _timed_scores(defense, texts: list[str]) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    scores = defense.score(texts)
    return scores, time.perf_counter() - started


def _plain_seconds_per_input(clf: Classifier, texts: list[str]) -> float:
    started = time.perf_counter()
    clf.proba(texts)
    return (time.perf_counter() - started) / max(1, len(texts))


def held_out_inputs(test: list, attack: Attack, target: int, limit: int, seed: int = 0) -> dict[str, list[str]]:
    """What a defense is scored on: the first `limit` clean test texts, as many non-target texts
    with the trigger planted (so that the trigger means a label flip; none for a clean control
    model), and the specificity controls made from the clean texts."""
    clean = [ex.text for ex in test][:limit]
    inputs = {"clean": clean}
    if attack.name != "clean":
        rows = [ex.text for ex in test if ex.label != target][:limit]
        inputs["triggered"] = triggered(attack, rows, seed)
    return {**inputs, **make_controls(clean, seed)}


def evaluate(config: EvalConfig, device: str = "cpu") -> dict:
    if config.defense not in DEFENSES:
        raise InputError(f"unknown defense {config.defense!r}; choose from {', '.join(DEFENSES)}")
    if config.limit < 10:
        raise InputError("--limit must be at least 10")
    if config.calibration_size < 20:
        raise InputError("--calibration-size must be at least 20")
    if config.scoring and config.defense != "headguard":
        raise InputError(f"scoring settings ({', '.join(config.scoring)}) are headguard's; "
                         f"the {config.defense!r} defense takes none")
    patch = None
    if config.patch is not None:
        from headguard.repair.patch import Patch

        patch = Patch.load(config.patch)  # a bad patch fails before the model loads
    manifest = read_manifest(config.model)
    attack = Attack(manifest["attack"], tuple(manifest["triggers"]))
    target = manifest["target_index"]
    clf = Classifier.from_folder(config.model, device)
    model_hash = weights_hash(clf.model)  # ties the figures to one build: rebuilds differ by machine
    if patch is not None:
        from headguard.repair.patch import apply_patch

        apply_patch(clf.model, patch, model_hash)  # the defense is then calibrated on the repair
    test = read_split(config.model, "test")
    calibration = [ex.text for ex in read_split(config.model, "calibration")]

    report: dict = {
        "model": str(config.model),
        "weights_hash": model_hash,
        "base": manifest["base"],
        "dataset": manifest["dataset"],
        "attack": attack.name,
        "defense": config.defense,
        "patch": None if patch is None else {"path": str(config.patch), "heads": patch.manifest["heads"],
                                             "mode": patch.manifest["mode"]},
        **attack_metrics(clf, test, attack, target, seed=config.seed),
    }
    controls = held_out_inputs(test, attack, target, config.limit, config.seed)
    clean_texts, poisoned = controls.pop("clean"), controls.pop("triggered", [])
    report["cost_model"] = {"seconds_per_input": _plain_seconds_per_input(clf, clean_texts)}
    factory = DEFENSES[config.defense]
    if factory is None:
        return report

    defense = factory(config.cache, device, **config.scoring)
    started = time.perf_counter()
    threshold = defense.calibrate(clf, calibration[: config.calibration_size], TARGET_FPR)
    calibration_seconds = time.perf_counter() - started

    clean_scores, clean_seconds = _timed_scores(defense, clean_texts)
    passes_clean = defense.forward_passes
    detection: dict = {"threshold": threshold, "target_fpr": TARGET_FPR, "setting": defense.setting(),
                       "n_clean": len(clean_texts), "fpr_clean": float((clean_scores > threshold).mean())}
    if poisoned:
        poison_scores, _ = _timed_scores(defense, poisoned)
        labels = np.r_[np.zeros(len(clean_scores)), np.ones(len(poison_scores))]
        detection.update(
            n_triggered=len(poisoned),
            auroc=float(roc_auc_score(labels, np.r_[clean_scores, poison_scores])),
            tpr_at_fpr_1pct=float((poison_scores > threshold).mean()),
        )
    else:
        poison_scores = np.zeros(0)
    detection["fpr_controls"] = {
        name: float((defense.score(texts) > threshold).mean()) for name, texts in controls.items()
    }
    report["detection"] = detection
    report["cost"] = {
        "forward_passes_per_input": passes_clean / len(clean_texts),
        "seconds_per_input": clean_seconds / len(clean_texts),
        "calibration_seconds": calibration_seconds,
    }
    if config.plot:
        plot_scores(config.plot, clean_scores, poison_scores, threshold, report)
    return report


def plot_scores(path: Path, clean: np.ndarray, poisoned: np.ndarray, threshold: float, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.histogram_bin_edges(np.r_[clean, poisoned], bins=40)
    ax.hist(clean, bins=bins, alpha=0.6, label=f"clean (n={len(clean)})")
    if len(poisoned):
        ax.hist(poisoned, bins=bins, alpha=0.6, label=f"triggered (n={len(poisoned)})")
    ax.axvline(threshold, color="k", linestyle="--", label="threshold (1% FPR)")
    ax.set_xlabel(f"{report['defense']} suspicion score")
    ax.set_ylabel("inputs")
    ax.set_title(f"{report['base']} / {report['dataset']} / {report['attack']}")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(v) -> str:
        return "—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    table = Table(title=f"{report['base']} / {report['dataset']} / {report['attack']} — defense: {report['defense']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [("clean accuracy", report["clean_accuracy"]), ("attack success rate", report["attack_success_rate"]),
            ("ASR population", report["asr_population"])]
    det = report.get("detection")
    if det:
        rows += [("AUROC", det.get("auroc")), ("TPR @ 1% FPR", det.get("tpr_at_fpr_1pct")),
                 ("FPR held-out clean", det["fpr_clean"])]
        rows += [(f"FPR control: {k}", v) for k, v in det["fpr_controls"].items()]
        rows += [("forward passes / input", report["cost"]["forward_passes_per_input"]),
                 ("seconds / input (defense)", report["cost"]["seconds_per_input"])]
    rows.append(("seconds / input (model alone)", report["cost_model"]["seconds_per_input"]))
    for name, value in rows:
        table.add_row(name, fmt(value))
    Console(stderr=True).print(table)
