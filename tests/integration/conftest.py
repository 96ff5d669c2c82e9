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
