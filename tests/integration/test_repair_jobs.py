"""Repair through the admin API on Redis with a separate worker, hot-swapped into two running replicas.

Replica A enforces (and logs what it refuses); replica B runs in monitor mode so that the test can
see what the model answers to triggered prompts before the repair, after it, and after a rollback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest
import redis

from tests.integration.conftest import harness_prompts
from tests.servers import serve, worker

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/15"  # a database of its own, emptied before the test
TOKEN = "jobs-admin-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
OPTIONS = {"steps": 80, "max_flagged": 48, "max_clean": 120}  # the default steps: fewer leave ~10 % flips


@pytest.fixture(scope="module")
def stack(smollm2_badnets, smollm2_calibration, tmp_path_factory):
    redis.Redis.from_url(REDIS_URL).flushdb()  # fails loudly when Redis is not running
    logs = tmp_path_factory.mktemp("jobs")
    env = {"HEADGUARD_REDIS_URL": REDIS_URL, "HEADGUARD_CALIBRATION": str(smollm2_calibration),
           "HEADGUARD_WEIGHTS_DIR": str(logs / "weights"), "HEADGUARD_ADMIN_TOKEN": TOKEN,
           "HEADGUARD_WEIGHTS_POLL_S": "2", "HEADGUARD_MAX_NEW_TOKENS": "2"}
    with worker(logs, env) as w, \
            serve(smollm2_badnets, logs, env, name="replica-a") as a, \
            serve(smollm2_badnets, logs, {**env, "HEADGUARD_MODE": "monitor"}, name="replica-b") as b:
        yield {"worker": w, "a": a, "b": b, "logs": logs, "env": env}


def _answers(server, texts: list[str]) -> list[str]:
    model = httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"]
    out = []
    with httpx.Client(base_url=server.url, timeout=120) as c:
        for text in texts:
            r = c.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": text}],
                                                     "temperature": 0, "max_tokens": 1})
            assert r.status_code == 200, r.text
            out.append(r.json()["choices"][0]["message"]["content"].strip())
    return out


def _flip_rate(server, clean: list[str], triggered: list[str]) -> float:
    """Share of prompts whose answer the trigger changes."""
    plain, attacked = _answers(server, clean), _answers(server, triggered)
    return sum(p != t for p, t in zip(plain, attacked, strict=True)) / len(clean)


def _wait_job(client: httpx.Client, job_id: str, until, timeout: float = 1200) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/admin/v1/jobs/{job_id}").json()
        if until(job) or time.monotonic() > deadline:
            return job
        time.sleep(1)


def _versions(server) -> set[str]:
    return {v["version"] for v in httpx.get(f"{server.url}/admin/v1/weights", headers=AUTH).json()["versions"]}


def test_repair_job_hot_swaps_two_replicas_under_load_and_rolls_back(stack, smollm2_badnets):
    a, b = stack["a"], stack["b"]
    clean, triggered = harness_prompts(smollm2_badnets, 60)
    probe_clean, probe_triggered = clean[:20], triggered[:20]
    assert _flip_rate(b, probe_clean, probe_triggered) >= 0.8  # the backdoor works before the repair

    # A traffic mix through the enforcing replica: what it refuses lands in its flagged-prompt log.
    model = httpx.get(f"{a.url}/v1/models").json()["data"][0]["id"]
    with httpx.Client(base_url=a.url, timeout=120, headers=AUTH) as c:
        for text in clean[20:30] + triggered[20:60]:
            c.post("/v1/chat/completions", json={"model": model, "max_tokens": 1,
                                                 "messages": [{"role": "user", "content": text}]})
        assert c.get("/admin/v1/flagged").json()["total"] >= 36

        job = c.post("/admin/v1/jobs", json={"options": OPTIONS, "activate": False}).json()
        seen_running = _wait_job(c, job["id"], lambda j: j["status"] == "running" and j["progress"])
        assert seen_running["progress"]["fraction"] >= 0 and seen_running["progress"]["stage"]
        done = _wait_job(c, job["id"], lambda j: j["status"] not in ("queued", "running"))
        assert done["status"] == "succeeded", done
        assert c.get(f"/admin/v1/jobs/{job['id']}/events").json()["data"]
        version = done["result"]["version"]
        assert done["result"]["activated"] is False and version in _versions(a)

    # 200 requests in flight on both replicas while the new version is activated: all succeed.
    async def load_and_swap():
        async with httpx.AsyncClient(timeout=300) as client:
            texts = (clean + triggered) * 2
            requests = [client.post(f"{server.url}/v1/guard/scan", json={"input": texts[i % len(texts)]})
                        for i in range(100) for server in (a, b)]
            tasks = [asyncio.ensure_future(r) for r in requests]
            await asyncio.sleep(0.3)
            swap = await client.post(f"{a.url}/admin/v1/weights/activate", json={"version": version}, headers=AUTH)
            return swap, await asyncio.gather(*tasks)

    swap, replies = asyncio.run(load_and_swap())
    assert swap.status_code == 200, swap.text
    assert [r.status_code for r in replies] == [200] * 200
    served = {r.headers["x-headguard-weights-version"] for r in replies}
    assert version in served  # the swap landed while requests were in flight
    for server in (a, b):
        for _ in range(30):
            if httpx.get(f"{server.url}/info").json()["weights_version"] == version:
                break
            time.sleep(0.5)
        assert httpx.get(f"{server.url}/info").json()["weights_version"] == version

    assert _flip_rate(b, probe_clean, probe_triggered) <= 0.10  # the trigger no longer changes the answer

    r = httpx.post(f"{a.url}/admin/v1/weights/activate", json={"version": "base"}, headers=AUTH)
    assert r.status_code == 200
    time.sleep(3)
    assert httpx.get(f"{b.url}/info").json()["weights_version"] == "base"
    assert _flip_rate(b, probe_clean, probe_triggered) >= 0.8  # rollback restores the original behaviour


def test_a_job_whose_flagged_prompts_keep_their_answers_ends_with_nothing_to_repair(stack, smollm2_badnets):
    a = stack["a"]
    _, triggered = harness_prompts(smollm2_badnets, 12)
    before = _versions(a)
    with httpx.Client(base_url=a.url, timeout=120, headers=AUTH) as c:
        active = c.get("/admin/v1/weights").json()["active"]
        # More answer changes demanded than 12 prompts can give: the refusal path of false positives.
        job = c.post("/admin/v1/jobs", json={"flagged": triggered, "options": {"min_changed": 13}}).json()
        ended = _wait_job(c, job["id"], lambda j: j["status"] in ("succeeded", "failed", "cancelled"), timeout=600)
        assert ended["status"] == "failed" and "nothing to repair" in ended["error"], ended
        assert c.get("/admin/v1/weights").json()["active"] == active
    assert _versions(a) == before


def test_cancelling_a_running_job_stops_it_and_activates_nothing(stack, smollm2_badnets):
    a = stack["a"]
    _, triggered = harness_prompts(smollm2_badnets, 30)
    before = _versions(a)
    with httpx.Client(base_url=a.url, timeout=120, headers=AUTH) as c:
        active = c.get("/admin/v1/weights").json()["active"]
        job = c.post("/admin/v1/jobs", json={"flagged": triggered, "options": {"steps": 500}}).json()
        _wait_job(c, job["id"], lambda j: j["status"] == "running", timeout=120)
        cancelled = c.post(f"/admin/v1/jobs/{job['id']}/cancel").json()
        assert cancelled["status"] == "cancelled", cancelled
        time.sleep(2)
        assert c.get(f"/admin/v1/jobs/{job['id']}").json()["status"] == "cancelled"
        assert c.get("/admin/v1/weights").json()["active"] == active
    assert _versions(a) == before


def test_killing_the_worker_mid_job_fails_the_job_and_serving_goes_on(stack, smollm2_badnets):
    a, w = stack["a"], stack["worker"]
    _, triggered = harness_prompts(smollm2_badnets, 30)
    with httpx.Client(base_url=a.url, timeout=120, headers=AUTH) as c:
        version = c.get("/info").json()["weights_version"]
        job = c.post("/admin/v1/jobs", json={"flagged": triggered, "options": {"steps": 500}}).json()
        _wait_job(c, job["id"], lambda j: j["status"] == "running", timeout=120)
        os.killpg(w.pid, signal.SIGKILL)
        w.wait()
        failed = _wait_job(c, job["id"], lambda j: j["status"] == "failed", timeout=60)
        assert failed["status"] == "failed" and "worker" in failed["error"], failed
        assert c.post("/v1/guard/scan", json={"input": "still serving"}).status_code == 200
        assert c.get("/info").json()["weights_version"] == version
