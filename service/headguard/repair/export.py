"""The repaired model as a plain Hugging Face folder, for serving engines that cannot apply a patch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from headguard.fsutil import atomic_folder
from headguard.models.classifier import Classifier
from headguard.models.fingerprint import weights_hash
from headguard.repair.patch import Patch, apply_patch

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
SKIP = {"lab.json", "splits"}  # harness-only files of a lab model stay with the lab model


def export(model: Path, patch_dir: Path, out: Path, device: str = "cpu") -> None:
    patch = Patch.load(patch_dir)
    model, out = Path(model), Path(out)
    clf = Classifier.from_folder(model, device)
    apply_patch(clf.model, patch, weights_hash(clf.model))
    with atomic_folder(out) as tmp:
        for item in model.iterdir():
            if item.name in SKIP or item.suffix in WEIGHT_SUFFIXES or item.name.endswith(".index.json"):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        clf.model.save_pretrained(tmp)
        (tmp / "headguard-patch.json").write_text(json.dumps(
            {"source": str(model), "patch": str(patch_dir), "base_hash": patch.base_hash,
             "heads": patch.manifest["heads"], "weights_hash": weights_hash(clf.model)}, indent=2) + "\n")
