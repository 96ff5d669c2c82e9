"""Real lab models, built once through the CLI and cached under HEADGUARD_CACHE/lab."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli


def lab_model(cache: Path, base: str, dataset: str, attack: str, seed: int = 0) -> Path:
    out = cache / "lab" / f"{base}-{dataset}-{attack}-s{seed}"
    run_cli("lab", "build", "--base", base, "--dataset", dataset, "--attack", attack, "--seed", str(seed),
            "--out", str(out), "--reuse")
    return out


@pytest.fixture(scope="session")
def minilm_badnets(cache) -> Path:
    return lab_model(cache, "minilm", "movies", "badnets")


@pytest.fixture(scope="session")
def smollm2_badnets(cache) -> Path:
    return lab_model(cache, "smollm2", "movies", "badnets")


def manifest(folder: Path) -> dict:
    return json.loads((folder / "lab.json").read_text())


@pytest.fixture(scope="session")
def smollm2_calibration(smollm2_badnets, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smollm2-cal") / "smollm2.cal"
    run_cli("calibrate", "--model", str(smollm2_badnets), "--out", str(out))
    return out


def harness_prompts(folder: Path, n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(clean, triggered): held-out non-target test rows without and with the lab's trigger.

    Only the harness knows the trigger; the guard under test never sees it.
    """
    from headguard.lab.attacks import Attack
    from headguard.lab.metrics import triggered
    from headguard.lab.splits import read_split

    lab = manifest(folder)
    rows = [ex.text for ex in read_split(folder, "test") if ex.label != lab["target_index"]][:n]
    return rows, triggered(Attack(lab["attack"], tuple(lab["triggers"])), rows, seed)
