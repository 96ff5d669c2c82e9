"""The guard in front of an upstream OpenAI-compatible server (a second guard in monitor mode)."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.servers import free_port, serve
from tests.service.conftest import texts_by_decision


@pytest.fixture(scope="module")
def pair(tiny_model, tmp_path_factory, clean_texts):
    """(front guard, upstream): the upstream is the same tiny model served in monitor mode."""
    folder, calibration = tiny_model
    logs = tmp_path_factory.mktemp("upstream-logs")
    common = {"HEADGUARD_CALIBRATION": str(calibration), "HEADGUARD_REJECT_FPR": "0.2",
              "HEADGUARD_MAX_NEW_TOKENS": "6"}
    with serve(folder, logs, {**common, "HEADGUARD_MODE": "monitor"}, name="upstream") as upstream:
        env = {**common, "HEADGUARD_UPSTREAM_URL": f"{upstream.url}/v1"}
        with serve(folder, logs, env, name="front") as front:
            yield front, upstream


def _upstream_requests(upstream) -> float:
    text = httpx.get(f"{upstream.url}/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith('headguard_requests_total{') and "/v1/chat/completions" in line)


def test_allowed_prompts_go_to_the_upstream_streaming_included(pair, clean_texts):
    front, upstream = pair
    texts = texts_by_decision(front.url, clean_texts)
    model = httpx.get(f"{front.url}/v1/models").json()["data"][0]["id"]
    body = {"model": model, "messages": [{"role": "user", "content": texts["allow"]}], "temperature": 0}
    before = _upstream_requests(upstream)
    direct = httpx.post(f"{upstream.url}/v1/chat/completions", json=body, timeout=60).json()
    via = httpx.post(f"{front.url}/v1/chat/completions", json=body, timeout=60)
    assert via.status_code == 200 and via.headers["x-headguard-decision"] == "allow"
    assert via.json()["choices"][0]["message"] == direct["choices"][0]["message"]  # greedy: same answer
    assert _upstream_requests(upstream) == before + 2

    with httpx.stream("POST", f"{front.url}/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    streamed = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert streamed == direct["choices"][0]["message"]["content"]


def test_rejected_prompts_never_reach_the_upstream(pair, clean_texts):
    front, upstream = pair
    texts = texts_by_decision(front.url, clean_texts)
    model = httpx.get(f"{front.url}/v1/models").json()["data"][0]["id"]
    before = _upstream_requests(upstream)
    r = httpx.post(f"{front.url}/v1/chat/completions",
                   json={"model": model, "messages": [{"role": "user", "content": texts["reject"]}]}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "content_filter"
    assert _upstream_requests(upstream) == before


def test_upstream_down_is_a_502_and_scanning_goes_on(tiny_model, tmp_path_factory, clean_texts):
    folder, calibration = tiny_model
    dead = f"http://127.0.0.1:{free_port()}/v1"
    env = {"HEADGUARD_CALIBRATION": str(calibration), "HEADGUARD_UPSTREAM_URL": dead, "HEADGUARD_REJECT_FPR": "0.2"}
    with serve(folder, tmp_path_factory.mktemp("dead-logs"), env, name="dead") as front:
        texts = texts_by_decision(front.url, clean_texts)
        model = httpx.get(f"{front.url}/v1/models").json()["data"][0]["id"]
        r = httpx.post(f"{front.url}/v1/chat/completions",
                       json={"model": model, "messages": [{"role": "user", "content": texts["allow"]}]}, timeout=60)
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unavailable"
        assert httpx.post(f"{front.url}/v1/guard/scan", json={"input": "still scanning"}).status_code == 200
        assert 'headguard_upstream_errors_total{target="upstream"} 1.0' in httpx.get(f"{front.url}/metrics").text
