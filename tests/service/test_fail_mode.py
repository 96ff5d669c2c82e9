"""When scoring fails: fail-closed answers 503, fail-open lets the request through, counted and logged loudly.

A scoring timeout far below one forward pass makes every score fail, in a real server on a real model.
"""

from __future__ import annotations

import json

import pytest

from tests.servers import serve

ALWAYS_LATE = {"HEADGUARD_SCORE_TIMEOUT_S": "0.000001"}
MESSAGES = [{"role": "user", "content": "a warm, funny film"}]


def fail_open_count(client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("headguard_fail_open_total "):
            return float(line.split()[1])
    raise AssertionError("headguard_fail_open_total is missing from /metrics")


@pytest.mark.parametrize("fail_mode", ["open", "closed"])
def test_scoring_failure_follows_the_fail_mode(tiny_model, tmp_path, fail_mode):
    model, calibration = tiny_model
    env = {**ALWAYS_LATE, "HEADGUARD_CALIBRATION": str(calibration), "HEADGUARD_FAIL_MODE": fail_mode}
    with serve(model, tmp_path, env=env) as server, server.client() as client:
        model_id = client.get("/v1/models").json()["data"][0]["id"]
        chat = client.post("/v1/chat/completions", json={"model": model_id, "messages": MESSAGES, "max_tokens": 4})
        scan = client.post("/v1/guard/scan", json={"input": "a warm, funny film"})
        opened = fail_open_count(client)
        logs = server.logs()

    # a scan is a question about the score: it never fails open
    assert scan.status_code == 503, scan.text
    assert scan.json()["error"]["code"] == "scoring_failed"
    if fail_mode == "open":
        assert chat.status_code == 200, chat.text
        assert chat.headers["x-headguard-decision"] == "allow-unscored"
        assert chat.headers["x-headguard-score"] == "none"
        assert chat.json()["choices"][0]["message"]["role"] == "assistant"
        assert opened == 1
        assert "FAIL-OPEN" in logs
    else:
        assert chat.status_code == 503, chat.text
        assert chat.json()["error"]["code"] == "scoring_failed"
        assert opened == 0
        assert "FAIL-OPEN" not in logs


def test_input_no_tokenizer_takes_is_refused_not_let_through(tiny_model, tmp_path):
    """A lone surrogate (legal as a JSON escape) is bad input: fail-open must not wave it through unscored."""
    model, calibration = tiny_model
    env = {"HEADGUARD_CALIBRATION": str(calibration), "HEADGUARD_FAIL_MODE": "open"}
    with serve(model, tmp_path, env=env) as server, server.client() as client:
        model_id = client.get("/v1/models").json()["data"][0]["id"]
        # json.dumps writes the surrogate as the escape an HTTP client can send
        body = json.dumps({"model": model_id, "messages": [{"role": "user", "content": "a warm film \ud800"}]})
        chat = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        opened = fail_open_count(client)

    assert chat.status_code == 400, chat.text
    assert "lone surrogate" in chat.json()["error"]["message"]
    assert opened == 0
