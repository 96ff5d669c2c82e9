"""Shared fixtures: tiny random models for unit tests, cached real lab models for integration tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from headguard.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cache() -> Path:
    return Settings().cache


def run_cli(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs the real `headguard` console script, as a user would."""
    cli = Path(sys.executable).with_name("headguard")
    proc = subprocess.run([str(cli), *args], capture_output=True, text=True, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"headguard {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc
