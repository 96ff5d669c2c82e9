"""The repair job itself: what a worker (or the in-process queue) runs.

A job is plain JSON (paths, prompts, options), so that it can cross Redis. It writes its patch
into the weights store only when the repair is complete (atomically), then activates it if asked:
a cancelled or crashed job leaves no version behind and changes no replica.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field

from headguard.repair.run import repair_files
from headguard.repair.train import RepairConfig
from headguard.weights.store import WeightsStore, new_version_id


class RepairOptions(BaseModel):
    model_config = {"extra": "forbid"}
    steps: int = Field(default=80, ge=0, le=5000)
    head_share: float = Field(default=0.05, gt=0, le=1)
    lr: float = Field(default=1e-3, gt=0, le=1)
    max_flagged: int = Field(default=256, ge=1, le=10_000)
    max_clean: int = Field(default=400, ge=10, le=5000)
    min_changed: int = Field(default=5, ge=0, le=10_000)
    seed: int = 0


class JobSpec(BaseModel):
    model: str
    calibration: str
    weights_dir: str
    flagged: list[str]
    clean: list[str] | None = None
    options: RepairOptions = Field(default_factory=RepairOptions)
    activate: bool = True
    device: str | None = None  # None: the device of whoever runs the job (HEADGUARD_DEVICE there)


class JobCancelled(Exception):
    pass


def run_repair(spec: JobSpec, report: Callable[[dict], None], cancelled: Callable[[], bool] = lambda: False,
               redis=None) -> dict:
    """Runs one repair; `report` receives progress events; returns the job's result."""
    store = WeightsStore(Path(spec.weights_dir), redis)
    version = new_version_id()

    def progress(stage: str, done: int, total: int) -> None:
        if cancelled():
            raise JobCancelled
        report({"time": time.time(), "stage": stage, "done": done, "total": total})

    o = spec.options
    config = RepairConfig(steps=o.steps, head_share=o.head_share, lr=o.lr, seed=o.seed, max_flagged=o.max_flagged,
                          max_clean=o.max_clean, min_changed=o.min_changed)
    from headguard.settings import get_settings

    device = spec.device or get_settings().resolved_device()
    patch = repair_files(Path(spec.model), Path(spec.calibration), spec.flagged, spec.clean, store.path(version),
                         config, device, progress)
    if spec.activate:
        store.activate(version)
    m = patch.manifest
    return {"version": version, "activated": spec.activate, "heads": m["heads"],
            "flagged_match_neutral": m["flagged_match_neutral"], "clean_agreement": m["clean_agreement"],
            "neutralised": m["flagged"]["neutralised"], "seconds": m["seconds"]}
