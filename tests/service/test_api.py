"""The guard's HTTP API on a real uvicorn server with a tiny random decoder: shapes, decisions, bad input."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.service.conftest import ADMIN_TOKEN, texts_by_decision


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def model_id(client) -> str:
    return client.get("/v1/models").json()["data"][0]["id"]


@pytest.fixture(scope="module")
def by_decision(server, clean_texts) -> dict[str, str]:
    # The thresholds are set wide in conftest: some clean texts fall in each band.
    return texts_by_decision(server.url, clean_texts, need=("allow", "route", "reject"))


def chat(model: str, text: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], "temperature": 0, **extra}


def test_ops_endpoints(client, server):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["ready"] is True
    info = client.get("/info").json()
    assert info["model_hash"].startswith("sha256:") and info["kind"] == "decoder" and info["device"] == "cpu"
    assert info["policy"]["route_threshold"] < info["policy"]["reject_threshold"]
    assert "/v1/guard/scan" in client.get("/openapi.json").json()["paths"]


def test_scan_shapes_and_headers(client, by_decision):
    r = client.post("/v1/guard/scan", json={"input": [by_decision["allow"], by_decision["reject"]]})
    assert r.status_code == 200
    body = r.json()
    assert body["weights_version"] == "base" and len(body["results"]) == 2
    allow, reject = body["results"]
    assert (allow["decision"], allow["flagged"]) == ("allow", False)
    assert (reject["decision"], reject["flagged"]) == ("reject", True) and reject["score"] > reject["threshold"]
    assert {"top_layers", "top_heads", "suspected_tokens"} <= reject["explanation"].keys()
    assert r.headers["x-headguard-decision"] == "reject"  # the most severe of the request
    assert float(r.headers["x-headguard-score"]) == pytest.approx(max(allow["score"], reject["score"]), abs=1e-3)
    assert r.headers["x-headguard-weights-version"] == "base"


def test_scan_accepts_one_text_and_chat_messages(client, by_decision):
    one = client.post("/v1/guard/scan", json={"input": by_decision["allow"]}).json()["results"]
    msgs = client.post("/v1/guard/scan", json={"messages": [{"role": "user", "content": by_decision["allow"]}]})
    assert len(one) == 1 and msgs.status_code == 200
    # A task model answers its last user message through its template: the same score as the plain text.
    assert msgs.json()["results"][0]["score"] == pytest.approx(one[0]["score"], abs=1e-6)


def test_concurrent_scans_match_one_by_one(server, clean_texts):
    """Micro-batched concurrent requests (padded together) score exactly as single requests."""
    import asyncio

    texts = clean_texts[:12]

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            replies = await asyncio.gather(*(c.post("/v1/guard/scan", json={"input": t}) for t in texts))
        return [r.json()["results"][0]["score"] for r in replies]

    together = asyncio.run(run())
    with server.client() as c:
        alone = [c.post("/v1/guard/scan", json={"input": t}).json()["results"][0]["score"] for t in texts]
    assert together == pytest.approx(alone, abs=1e-4)
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "headguard_batch_size_count" in metrics


def test_chat_completion_generates_locally(client, model_id, by_decision):
    r = client.post("/v1/chat/completions", json=chat(model_id, by_decision["allow"], max_tokens=4))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == model_id
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert 1 <= body["usage"]["completion_tokens"] <= 4
    assert r.headers["x-headguard-decision"] == "allow"


def test_chat_completion_streams(client, model_id, by_decision):
    with client.stream("POST", "/v1/chat/completions",
                       json=chat(model_id, by_decision["allow"], stream=True, max_tokens=4)) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-headguard-decision"] == "allow"
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in {"stop", "length"}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_completions_endpoint(client, model_id, by_decision):
    r = client.post("/v1/completions", json={"model": model_id, "prompt": by_decision["allow"], "max_tokens": 3,
                                             "temperature": 0})
    assert r.status_code == 200 and r.json()["object"] == "text_completion"


def test_rejected_prompt_gets_the_openai_content_filter_error(client, model_id, by_decision):
    r = client.post("/v1/chat/completions", json=chat(model_id, by_decision["reject"]))
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "content_filter" and error["type"] == "invalid_request_error"
    assert r.headers["x-headguard-decision"] == "reject" and float(r.headers["x-headguard-score"]) > 0


def test_routed_prompt_without_a_safer_model_is_refused(client, model_id, by_decision):
    r = client.post("/v1/chat/completions", json=chat(model_id, by_decision["route"]))
    assert r.status_code == 400 and r.json()["error"]["code"] == "content_filter"
    assert r.headers["x-headguard-decision"] == "route"
    assert "route threshold" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/v1/guard/scan", b"{not json", 400, "not valid JSON"),
        ("/v1/guard/scan", {"input": 5}, 400, "input"),
        ("/v1/guard/scan", {}, 400, "exactly one of"),
        ("/v1/guard/scan", {"input": "x", "messages": [{"role": "user", "content": "y"}]}, 400, "exactly one of"),
        ("/v1/guard/scan", {"input": ""}, 400, "empty"),
        ("/v1/guard/scan", {"input": ["fine", "   "]}, 400, "input 1 is empty"),
        ("/v1/guard/scan", {"input": []}, 400, "no input"),
        ("/v1/guard/scan", {"input": ["a"] * 17}, 400, "at most 16"),
        ("/v1/guard/scan", {"input": "word " * 1000}, 400, "characters"),
        ("/v1/guard/scan", {"input": "x", "model": "other"}, 404, "does not exist"),
        ("/v1/guard/scan", {"input": "x", "extra": 1}, 400, "extra"),
        ("/v1/chat/completions", {"model": "MODEL", "messages": []}, 400, "messages"),
        ("/v1/chat/completions", {"model": "other", "messages": [{"role": "user", "content": "x"}]}, 404, "other"),
        ("/v1/chat/completions", {"model": "MODEL", "messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
        ("/v1/chat/completions", {"model": "MODEL", "messages": [{"role": "user", "content": "x"}],
                                  "max_tokens": 0}, 400, "max_tokens"),
        ("/v1/completions", {"model": "MODEL"}, 400, "prompt"),
        ("/v1/completions", {"model": "MODEL", "prompt": []}, 400, "prompt"),
        # JSON can escape a lone surrogate, which no tokenizer takes: bad input, not a scoring fault
        ("/v1/guard/scan", b'{"input": "a warm film \\ud800"}', 400, "lone surrogate"),
        ("/v1/chat/completions", b'{"model": "MODEL", "messages": [{"role": "user", "content": "ok \\ud800"}]}',
         400, "lone surrogate"),
    ],
)
def test_bad_input_is_a_clear_4xx(client, model_id, path, body, status, needle):
    before = client.get("/metrics").text.count("headguard_inputs_total{")
    if isinstance(body, bytes):
        r = client.post(path, content=body.replace(b"MODEL", model_id.encode()),
                        headers={"content-type": "application/json"})
    else:
        body = {k: (model_id if v == "MODEL" else v) for k, v in body.items()}
        r = client.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error["message"], error
    assert client.get("/metrics").text.count("headguard_inputs_total{") == before


def test_oversize_body_is_refused(client):
    r = client.post("/v1/guard/scan", content=b"x" * (9 * 1024 * 1024), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert "9437184 bytes" in r.json()["error"]["message"]


def test_oversize_chunked_body_is_refused(client):
    """A chunked upload declares no length: the cap counts what is read."""
    chunks = (b"x" * 1024 * 1024 for _ in range(9))
    r = client.post("/v1/guard/scan", content=chunks, headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert "over the limit" in r.json()["error"]["message"]


def test_flagged_prompts_are_logged_for_admins(client, by_decision):
    client.post("/v1/guard/scan", json={"input": by_decision["reject"]})
    assert client.get("/admin/v1/flagged").status_code == 401
    assert client.get("/admin/v1/flagged", headers={"authorization": "Bearer wrong"}).status_code == 401
    r = client.get("/admin/v1/flagged", params={"limit": 5}, headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 200
    entries = r.json()["data"]
    assert entries and entries[-1]["text"] == by_decision["reject"] and entries[-1]["decision"] == "reject"
    assert all(set(e) >= {"id", "time", "score", "route", "decision", "text"} for e in entries)


def test_recalibration_through_the_admin_api(client, clean_texts):
    auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    bad = client.post("/admin/v1/calibration", json={"prompts": clean_texts[:3]}, headers=auth)
    assert bad.status_code == 400 and "prompts" in bad.json()["error"]["message"]
    before_info = client.get("/info").json()
    before = before_info["policy"]
    r = client.post("/admin/v1/calibration", json={"prompts": clean_texts[60:180], "target_fpr": 0.05},
                    headers=auth)
    assert r.status_code == 200, r.text
    after = client.get("/info").json()
    assert after["calibration"]["prompts"] == 120 and after["calibration"]["target_fpr"] == 0.05
    # What is scored stays as it was (the fixture's calibration is not the decoder defaults).
    assert [before_info["calibration"][k] for k in ("families", "top_k", "length_adjusted", "per_head", "coverage")
            ] == [["entropy"], 3, True, True, []]
    scored = ("method", "families", "top_k", "length_adjusted", "per_head", "coverage", "length_bands")
    assert {k: after["calibration"][k] for k in scored} == {k: before_info["calibration"][k] for k in scored}
    assert after["policy"]["reject_threshold"] == pytest.approx(r.json()["reject_threshold"])
    assert after["policy"] != before


def test_metrics_count_decisions(client):
    text = client.get("/metrics").text
    for name in ("headguard_requests_total", "headguard_score_bucket", "headguard_scoring_duration_seconds_bucket",
                 "headguard_request_duration_seconds_bucket", "headguard_queue_depth", "headguard_weights_info",
                 "headguard_build_info", "headguard_fail_open_total"):
        assert name in text, name
    assert 'headguard_requests_total{decision="reject",route="/v1/guard/scan"}' in text
