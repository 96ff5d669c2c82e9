"""Set-up shared by the decoder analysis scripts: a lab decoder that returns its attention weights."""

from __future__ import annotations

from pathlib import Path

from headguard.lab.attacks import Attack
from headguard.lab.build import read_manifest
from headguard.models.classifier import Classifier


def open_lab_decoder(folder: Path, script: str) -> tuple[Classifier, Attack, int]:
    """The model, its attack (the harness may know the trigger) and the target label's index."""
    lab = read_manifest(folder)
    clf = Classifier.from_folder(folder)
    if clf.task.kind != "decoder":
        raise SystemExit(f"{script} reads a decoder's prompt positions; {folder.name} is not a decoder")
    clf.model.config._attn_implementation = "eager"  # attention weights out
    return clf, Attack(lab["attack"], tuple(lab["triggers"])), lab["target_index"]
