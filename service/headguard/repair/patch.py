"""A repair patch: only the changed parameter slices, with a manifest, applied and reverted in place.

A patch folder holds `patch.safetensors` (one tensor per slice) and `manifest.json` (format,
version, the base weights hash, the slices, the heads and the repair's measurements). Applying
keeps the original slices, so that revert restores the exact original bits.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

from headguard.errors import InputError
from headguard.fsutil import atomic_folder

FORMAT = "headguard-patch"
VERSION = 1
TENSORS = "patch.safetensors"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class SliceRef:
    param: str  # parameter name in model.named_parameters()
    dim: int
    start: int
    stop: int

    def view(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.narrow(self.dim, self.start, self.stop - self.start)


@dataclass
class Patch:
    manifest: dict
    slices: list[SliceRef]
    values: list[torch.Tensor]

    @property
    def base_hash(self) -> str:
        return self.manifest["base_hash"]

    def save(self, folder: Path) -> None:
        """Writes atomically: a half-written patch never appears under `folder`."""
        with atomic_folder(folder) as tmp:
            save_file({f"slice_{i:04d}": v.contiguous() for i, v in enumerate(self.values)}, str(tmp / TENSORS))
            digest = hashlib.sha256((tmp / TENSORS).read_bytes()).hexdigest()
            manifest = {**self.manifest, "format": FORMAT, "version": VERSION, "tensors_sha256": digest,
                        "slices": [asdict(s) for s in self.slices]}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> Patch:
        folder = Path(folder)
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            raw = (folder / TENSORS).read_bytes()
        except FileNotFoundError as exc:
            raise InputError(f"{folder} is not a headguard patch: {Path(exc.filename).name} is missing") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{folder} is not a readable headguard patch ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise InputError(f"{folder} is not a headguard patch")
        if int(manifest.get("version", 0)) > VERSION:
            raise InputError(f"{folder} has patch format {manifest['version']}; this headguard reads {VERSION}")
        if hashlib.sha256(raw).hexdigest() != manifest.get("tensors_sha256"):
            raise InputError(f"{folder}/{TENSORS} is corrupted: its checksum does not match the manifest")
        tensors = load_bytes(raw)  # the very bytes that were checksummed
        slices = [SliceRef(**s) for s in manifest["slices"]]
        values = [tensors[f"slice_{i:04d}"] for i in range(len(slices))]
        return cls(manifest, slices, values)


def patch_views(model: torch.nn.Module, patch: Patch) -> list[torch.Tensor]:
    """The model's tensors the patch writes to; raises if any slice does not fit (nothing is changed)."""
    params = dict(model.named_parameters())
    views = []
    for ref, value in zip(patch.slices, patch.values, strict=True):
        if ref.param not in params:
            raise InputError(f"the patch changes {ref.param}, which this model does not have")
        view = ref.view(params[ref.param].data)
        if view.shape != value.shape:
            raise InputError(f"the patch's slice of {ref.param} is {tuple(value.shape)}, "
                             f"the model's is {tuple(view.shape)}")
        views.append(view)
    return views


class AppliedPatch:
    """A patch applied in place; `revert()` puts the original bits back."""

    def __init__(self, model: torch.nn.Module, patch: Patch):
        views = patch_views(model, patch)  # every check before any change
        self.patch = patch
        self._views = views
        self._originals = [v.clone() for v in views]
        with torch.no_grad():
            for view, value in zip(views, patch.values, strict=True):
                view.copy_(value.to(view.dtype))
        self.active = True

    def revert(self) -> None:
        if not self.active:
            return
        with torch.no_grad():
            for view, original in zip(self._views, self._originals, strict=True):
                view.copy_(original)
        self.active = False


def check_patch(model: torch.nn.Module, patch: Patch, model_hash: str) -> None:
    """Raises unless `patch` was made for these weights (hash) and every slice fits."""
    if patch.base_hash != model_hash:
        raise InputError(f"this patch was made for other weights ({patch.base_hash[:19]}…); "
                         f"the loaded model is {model_hash[:19]}…")
    patch_views(model, patch)


def apply_patch(model: torch.nn.Module, patch: Patch, model_hash: str) -> AppliedPatch:
    """Applies `patch` to the model whose weights hash to `model_hash`; refuses a patch for other weights."""
    check_patch(model, patch, model_hash)
    return AppliedPatch(model, patch)
