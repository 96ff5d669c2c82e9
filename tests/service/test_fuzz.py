"""A property-based fuzz pass over every operation in /openapi.json: no input yields a 5xx."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.servers import serve
from tests.service.conftest import ADMIN_TOKEN


def test_no_input_from_the_schema_gives_a_server_error(tiny_model, tmp_path):
    folder, calibration = tiny_model
    env = {"HEADGUARD_CALIBRATION": str(calibration), "HEADGUARD_ADMIN_TOKEN": ADMIN_TOKEN,
           "HEADGUARD_MAX_NEW_TOKENS": "2"}
    st = Path(sys.executable).with_name("st")
    with serve(folder, tmp_path, env, name="fuzz") as s:
        proc = subprocess.run([str(st), "run", f"{s.url}/openapi.json", "--checks", "not_a_server_error",
                               "--max-examples", "25", "--request-timeout", "120",
                               "--header", f"Authorization: Bearer {ADMIN_TOKEN}"],
                              capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
