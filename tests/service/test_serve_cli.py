"""`headguard serve` refuses what it cannot serve, and its admin API stays shut without a token."""

from __future__ import annotations

import httpx

from tests.conftest import run_cli
from tests.servers import serve


def test_serve_refuses_a_missing_model(tmp_path):
    proc = run_cli("serve", "--model", str(tmp_path / "nope"), "--port", "1", check=False)
    assert proc.returncode == 2 and "config.json is missing" in proc.stderr


def test_serve_exits_when_the_calibration_belongs_to_another_model(tiny_model, tmp_path):
    folder, calibration = tiny_model
    other = tmp_path / "other"
    other.mkdir()
    for f in folder.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    weights = other / "model.safetensors"
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + 1
    save_file(tensors, weights, metadata={"format": "pt"})
    proc = run_cli("serve", "--model", str(other), "--calibration", str(calibration), "--port", "0", check=False,
                   env={"HEADGUARD_STATE_DIR": str(tmp_path / "state")})
    assert proc.returncode == 2 and "belongs to another model" in proc.stderr


def test_admin_api_is_shut_without_a_token(tiny_model, tmp_path):
    folder, calibration = tiny_model
    with serve(folder, tmp_path, {"HEADGUARD_CALIBRATION": str(calibration)}, name="noadmin") as s:
        r = httpx.get(f"{s.url}/admin/v1/flagged", headers={"authorization": "Bearer anything"})
        assert r.status_code == 403 and "HEADGUARD_ADMIN_TOKEN" in r.json()["error"]["message"]


def test_a_bad_setting_is_one_line(tiny_model):
    proc = run_cli("serve", "--model", str(tiny_model[0]), check=False, env={"HEADGUARD_MODE": "loud"})
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "HEADGUARD_MODE" in proc.stderr


def test_a_classifier_scans_but_cannot_chat_without_an_upstream(tiny_encoder_model, tmp_path):
    folder, calibration = tiny_encoder_model
    env = {"HEADGUARD_CALIBRATION": str(calibration), "HEADGUARD_MODE": "monitor"}  # every prompt goes through
    with serve(folder, tmp_path, env, name="encoder") as s:
        info = httpx.get(f"{s.url}/info").json()
        assert info["kind"] == "encoder" and info["can_generate"] is False
        assert httpx.post(f"{s.url}/v1/guard/scan", json={"input": "a fine film"}).status_code == 200
        r = httpx.post(f"{s.url}/v1/chat/completions", json={"model": info["model"], "messages": [
            {"role": "user", "content": "a fine film"}]})
        assert r.status_code == 400 and "cannot generate" in r.json()["error"]["message"]
