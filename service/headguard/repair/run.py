"""Repair from files: the model folder, its calibration, flagged and clean prompts -> a patch folder."""

from __future__ import annotations

from pathlib import Path

from headguard.detect.calibration import Calibration
from headguard.detect.detector import Detector
from headguard.errors import InputError
from headguard.lab.splits import SPLITS_DIR, read_split
from headguard.models.classifier import Classifier
from headguard.repair.patch import Patch
from headguard.repair.train import Progress, RepairConfig, Repairer


def default_clean(model: Path) -> list[str]:
    """A lab model's own clean calibration split (the prompts its calibration was fitted on)."""
    if not (Path(model) / SPLITS_DIR / "calibration.jsonl").exists():
        raise InputError(f"{model} has no clean calibration split: pass clean prompts (--clean FILE.jsonl)")
    return [ex.text for ex in read_split(model, "calibration")]


def repair_files(model: Path, calibration: Path, flagged: list[str], clean: list[str] | None, out: Path,
                 config: RepairConfig, device: str = "cpu", progress: Progress | None = None) -> Patch:
    config.validate()
    if not flagged:
        raise InputError("no flagged prompts: repair learns from what the detector caught")
    clean = clean if clean is not None else default_clean(model)
    cal = Calibration.load(calibration)
    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot write --out {out}: {exc.strerror or exc}") from None
    clf = Classifier.from_folder(model, device)
    detector = Detector(clf, cal)
    patch = Repairer(clf, detector, config, progress).run(flagged, clean, detector.model_hash)
    patch.save(out)
    return patch
