"""A real Prometheus scrapes a running guard and worker under a traffic mix with triggered prompts and a
repair job; every dashboard query and alert rule is evaluated through Prometheus's HTTP API.

The guard serves the MiniLM BadNets lab model in front of an upstream (a second headguard on a tiny
decoder), so that upstream latency has data too. Only this harness knows the trigger.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from tests.integration.conftest import harness_prompts
from tests.servers import free_port, prometheus, serve, worker
from tests.service.conftest import clean_texts, tiny_model  # noqa: F401  (fixtures for the upstream)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "headguard.json"
RULES = DEPLOY / "prometheus" / "rules"
REDIS_URL = "redis://127.0.0.1:6379/14"  # a database of its own, emptied before the test
TOKEN = "observability-admin-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
RATE_INTERVAL = "10s"  # what Grafana's $__rate_interval becomes at a 1 s scrape interval
COMPARISON = re.compile(r"\s(>|<|>=|<=|==|!=)\s(?=[-\d.]+$)")
# Alerts the traffic below must trip (pending: their `for` has not elapsed yet) or leave alone.
EXPECTED_ALERTS = {"HeadguardDetectionRateSpike": 1, "HeadguardFailOpen": 0, "HeadguardRepairJobFailed": 0,
                   "HeadguardWeightsVersionSkew": 0, "HeadguardScoringLatencyHigh": 0,
                   "HeadguardReplicaNotReady": 0}


def scrape_config(targets: dict[str, str]) -> dict:
    """The deploy config, scraping this test's processes every second."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(RULES / "*.yml")]
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    return config


def query(prom: str, expr: str, at: float | None = None) -> list[dict]:
    params = {"query": expr, **({"time": at} if at else {})}
    body = httpx.get(f"{prom}/api/v1/query", params=params, timeout=30).json()
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def query_range(prom: str, expr: str, start: float, end: float) -> list[dict]:
    body = httpx.get(f"{prom}/api/v1/query_range", params={"query": expr, "start": start, "end": end, "step": 1},
                     timeout=30).json()
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def dashboard_targets() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in json.loads(DASHBOARD.read_text())["panels"]
            for target in panel["targets"]]


def rules() -> list[dict]:
    return [rule for f in sorted(RULES.glob("*.yml")) for group in yaml.safe_load(f.read_text())["groups"]
            for rule in group["rules"]]


class Traffic:
    """Sends scans and chats to the guard, spread in time so that rates have points to stand on."""

    def __init__(self, guard_url: str):
        self.client = httpx.Client(base_url=guard_url, timeout=120)
        self.model = self.client.get("/v1/models").json()["data"][0]["id"]
        self.sent = self.triggered = 0

    def send(self, texts: list[str], triggered: set[str], chat_every: int = 8, pause: float = 0.15) -> None:
        for i, text in enumerate(texts):
            if i % chat_every == 0:
                r = self.client.post("/v1/chat/completions", json={
                    "model": self.model, "max_tokens": 2, "messages": [{"role": "user", "content": text}]})
            else:
                r = self.client.post("/v1/guard/scan", json={"input": text})
            assert r.status_code < 500, r.text
            self.sent += 1
            self.triggered += text in triggered
            time.sleep(pause)


@pytest.fixture(scope="module")
def stack(minilm_badnets, tiny_model, tmp_path_factory):  # noqa: F811
    redis.Redis.from_url(REDIS_URL).flushdb()  # fails loudly when Redis is not running
    logs = tmp_path_factory.mktemp("observability")
    upstream_model, upstream_calibration = tiny_model
    env = {"HEADGUARD_REDIS_URL": REDIS_URL, "HEADGUARD_WEIGHTS_DIR": str(logs / "weights"),
           "HEADGUARD_ADMIN_TOKEN": TOKEN, "HEADGUARD_WEIGHTS_POLL_S": "1"}
    worker_port = free_port()
    with serve(upstream_model, logs, {"HEADGUARD_CALIBRATION": str(upstream_calibration),
                                      "HEADGUARD_MODE": "monitor"}, name="upstream") as upstream, \
            serve(minilm_badnets, logs, {**env, "HEADGUARD_UPSTREAM_URL": f"{upstream.url}/v1"},
                  name="guard") as guard, \
            worker(logs, {**env, "HEADGUARD_WORKER_METRICS_PORT": str(worker_port)}), \
            prometheus(scrape_config({"headguard": guard.url.removeprefix("http://"),
                                      "headguard-worker": f"127.0.0.1:{worker_port}"}), logs) as prom:
        yield {"guard": guard, "prom": prom, "logs": logs}


@pytest.fixture(scope="module")
def observed(stack, minilm_badnets):
    """Clean traffic, then a mix with triggered prompts, then a repair job from the flagged log."""
    guard = stack["guard"]
    start = time.time()
    clean, triggered = harness_prompts(minilm_badnets, 160)
    traffic = Traffic(guard.url)
    traffic.send(clean[:50], set())

    mix_start, before = time.time(), (traffic.sent, traffic.triggered)
    mixed = [text for i in range(20) for text in (*clean[50 + 3 * i: 53 + 3 * i], triggered[i])]
    traffic.send(mixed, set(triggered))
    time.sleep(2)  # one more scrape
    mix_end = time.time()
    sent, hit = traffic.sent - before[0], traffic.triggered - before[1]

    with httpx.Client(base_url=guard.url, headers=AUTH, timeout=60) as admin:
        job = admin.post("/admin/v1/jobs", json={"options": {"steps": 30, "max_clean": 100}})
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]
        deadline = time.monotonic() + 600
        while admin.get(f"/admin/v1/jobs/{job_id}").json()["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, "the repair job did not finish in 10 minutes"
            traffic.send([clean[100 + int(time.time()) % 60], triggered[20 + int(time.time()) % 40]], set(triggered),
                         pause=0.5)
        done = admin.get(f"/admin/v1/jobs/{job_id}").json()
    assert done["status"] == "succeeded", done
    for _ in range(60):
        if httpx.get(f"{guard.url}/info").json()["weights_version"] == done["result"]["version"]:
            break
        time.sleep(0.5)
    traffic.send(clean[120:140] + triggered[60:65], set(triggered))
    time.sleep(3)
    return {"start": start, "end": time.time(), "mix_start": mix_start, "mix_end": mix_end,
            "mix_share": hit / sent, "version": done["result"]["version"]}


@pytest.mark.parametrize("title,expr", dashboard_targets(), ids=[t for t, _ in dashboard_targets()])
def test_every_dashboard_query_returns_data(stack, observed, title, expr):
    result = query_range(stack["prom"], expr.replace("$__rate_interval", RATE_INTERVAL), observed["start"],
                         observed["end"])
    values = [float(v) for series in result for _, v in series["values"]]
    assert any(v == v for v in values), f"{title}: {expr} returned no data"  # v == v: not NaN


def test_the_detection_rate_panel_shows_the_triggered_share(stack, observed):
    title, expr = next((t, e) for t, e in dashboard_targets() if t == "Detection rate")
    window = f"{int(observed['mix_end'] - observed['mix_start'])}s"
    [series] = query(stack["prom"], expr.replace("$__rate_interval", window), at=observed["mix_end"])
    shown = float(series["value"][1])
    # the lab model's trigger is caught almost always; clean prompts flag at about the calibrated 1 %
    assert abs(shown - observed["mix_share"]) <= 0.06, (shown, observed["mix_share"])


def test_every_rule_is_healthy_and_returns_data(stack, observed):
    groups = httpx.get(f"{stack['prom']}/api/v1/rules", timeout=30).json()["data"]["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    for rule in rules():
        name = rule.get("record") or rule["alert"]
        assert loaded[name]["health"] == "ok", loaded[name]
        if "record" in rule:
            assert query(stack["prom"], rule["record"]), f"{name} recorded nothing"


def test_alerts_trip_on_the_triggered_mix_and_stay_quiet_otherwise(stack, observed):
    """Each alert is `quantity <op> number`: its `bool` form always returns data, 1 where it would fire."""
    prom = stack["prom"]
    states = {rule["name"]: rule["state"] for group in
              httpx.get(f"{prom}/api/v1/rules", timeout=30).json()["data"]["groups"]
              for rule in group["rules"] if rule["type"] == "alerting"}
    alerts = {rule["alert"]: rule["expr"] for rule in rules() if "alert" in rule}
    assert set(alerts) == set(EXPECTED_ALERTS)
    for name, expr in alerts.items():
        assert COMPARISON.search(expr), f"{name}: write alerts as `recorded quantity <op> number`"
        [series] = query(prom, COMPARISON.sub(r" \1 bool ", expr))
        assert float(series["value"][1]) == EXPECTED_ALERTS[name], (name, expr, series)
        assert (states[name] != "inactive") == bool(EXPECTED_ALERTS[name]), (name, states[name])


def test_the_worker_reports_the_job_and_the_replica_its_new_version(stack, observed):
    prom = stack["prom"]
    assert query(prom, 'up{job="headguard-worker"} == 1')
    assert query(prom, 'max(headguard_jobs{job="headguard-worker", status="succeeded"}) >= 1')
    assert query(prom, 'max_over_time(headguard_worker_busy[15m]) == 1')  # it was busy during the job
    assert query(prom, 'increase(headguard_weights_swaps_total{result="applied"}[15m]) > 0')
    versions = {s["metric"]["version"] for s in query(prom, "headguard_weights_info")}
    assert versions == {observed["version"]}


def test_the_dashboard_renders_from_prometheus(stack, observed, tmp_path):
    out = Path(os.environ.get("HEADGUARD_DASHBOARD_PNG", tmp_path / "dashboard.png"))
    minutes = (time.time() - observed["start"]) / 60 + 0.2
    result = subprocess.run([sys.executable, str(DEPLOY / "grafana" / "render.py"), "--prometheus", stack["prom"],
                             "--minutes", f"{minutes:.2f}", "--rate-interval", RATE_INTERVAL, "--out", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 20_000
