"""With Redis gone, scanning and generation go on; the admin job and weights calls answer 503.

The test runs a Redis server of its own (the same binary `make test` ensures) so that it can stop it.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import redis

from tests.servers import free_port, serve
from tests.service.conftest import ADMIN_TOKEN

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture()
def private_redis(tmp_path):
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed: run deploy/ensure-redis.sh"
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir",
                                str(tmp_path)], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(50):
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    yield url, process
    process.kill()
    process.wait()


def test_redis_down_degrades_only_the_admin_job_calls(tiny_model, tmp_path, private_redis, clean_texts):
    url, redis_process = private_redis
    folder, calibration = tiny_model
    env = {"HEADGUARD_CALIBRATION": str(calibration), "HEADGUARD_REDIS_URL": url, "HEADGUARD_ADMIN_TOKEN": ADMIN_TOKEN,
           "HEADGUARD_MAX_NEW_TOKENS": "2", "HEADGUARD_REJECT_FPR": "0.001"}
    with serve(folder, tmp_path, env, name="redis-down") as s, s.client() as c:
        assert c.get("/admin/v1/jobs", headers=AUTH).status_code == 200  # Redis up: the queue answers
        redis_process.kill()
        redis_process.wait()
        model = c.get("/v1/models").json()["data"][0]["id"]
        assert c.post("/v1/guard/scan", json={"input": clean_texts[0]}).status_code == 200
        chat = c.post("/v1/chat/completions", json={"model": model, "temperature": 0, "max_tokens": 2,
                                                    "messages": [{"role": "user", "content": clean_texts[1]}]})
        assert chat.status_code == 200, chat.text
        for method, path, body in [("GET", "/admin/v1/jobs", None), ("GET", "/admin/v1/jobs/abc", None),
                                   ("POST", "/admin/v1/jobs", {"flagged": ["x"], "clean": clean_texts[:10]}),
                                   ("GET", "/admin/v1/weights", None)]:
            r = c.request(method, path, json=body, headers=AUTH)
            assert r.status_code == 503, (path, r.status_code, r.text)
            assert "unavailable" in r.json()["error"]["message"]
        assert c.get("/ready").status_code == 200
        assert "headguard_requests_total" in c.get("/metrics").text  # the jobs collector stays quiet
