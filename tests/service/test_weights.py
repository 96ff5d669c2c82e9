"""Weights versions on a running server: activate a patch (hot-swap), roll back exactly, refuse bad ones."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import redis
import torch

from headguard.models.classifier import Classifier
from headguard.models.fingerprint import weights_hash
from headguard.repair.patch import Patch, SliceRef
from headguard.weights.store import ACTIVE_KEY, BASE, CHANNEL, WeightsStore, new_version_id
from tests.servers import serve
from tests.service.conftest import ADMIN_TOKEN

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def _write_patch(model_dir, weights_dir, base_hash=None, version=None) -> str:
    """A patch that rewrites heads 0-1 of layer 1 with random values, stored as a new version."""
    clf = Classifier.from_folder(model_dir)
    from headguard.detect.heads import adapter_for

    names = {id(p): n for n, p in clf.model.named_parameters()}
    slices = adapter_for(clf.model).head_slices(1, {0, 1})
    torch.manual_seed(1)
    refs = [SliceRef(names[id(p)], dim, a, b) for p, dim, a, b in slices]
    values = [torch.randn_like(ref.view(p.detach())) for ref, (p, *_) in zip(refs, slices, strict=True)]
    version = version or new_version_id()
    manifest = {"base_hash": base_hash or weights_hash(clf.model), "heads": ["L1H0", "L1H1"], "mode": "heads"}
    Patch(manifest, refs, values).save(WeightsStore(weights_dir).path(version))
    return version


@pytest.fixture(scope="module")
def swap_server(tiny_model, tmp_path_factory):
    folder, calibration = tiny_model
    state = tmp_path_factory.mktemp("swap-state")
    env = {"HEADGUARD_CALIBRATION": str(calibration), "HEADGUARD_ADMIN_TOKEN": ADMIN_TOKEN,
           "HEADGUARD_STATE_DIR": str(state), "HEADGUARD_WEIGHTS_POLL_S": "0.5"}
    with serve(folder, tmp_path_factory.mktemp("swap-logs"), env, name="swap") as s:
        yield s, state / "weights"


def test_activate_swaps_weights_and_rollback_restores_the_exact_scores(swap_server, tiny_model, clean_texts):
    server, weights_dir = swap_server
    version = _write_patch(tiny_model[0], weights_dir)
    with server.client(headers=AUTH) as c:
        texts = clean_texts[:8]
        before = [r["score"] for r in c.post("/v1/guard/scan", json={"input": texts}).json()["results"]]
        listed = c.get("/admin/v1/weights").json()
        assert listed["active"] == "base" and version in [v["version"] for v in listed["versions"]]
        r = c.post("/admin/v1/weights/activate", json={"version": version})
        assert r.status_code == 200 and r.json() == {"active": version, "serving": version}
        scan = c.post("/v1/guard/scan", json={"input": texts})
        assert scan.headers["x-headguard-weights-version"] == version
        assert [r["score"] for r in scan.json()["results"]] != before
        assert c.get("/info").json()["weights_version"] == version
        # A calibration belongs to the base weights: refused while the patch is served, thresholds kept.
        policy = c.get("/info").json()["policy"]
        r = c.post("/admin/v1/calibration", json={"prompts": clean_texts[60:180]})
        assert r.status_code == 409 and r.json()["error"]["code"] == "patched_weights", r.text
        assert c.get("/info").json()["policy"] == policy
        assert c.post("/admin/v1/weights/activate", json={"version": "base"}).json()["serving"] == "base"
        after = [r["score"] for r in c.post("/v1/guard/scan", json={"input": texts}).json()["results"]]
        assert after == before  # revert restores the original bits, so the scores are identical
        metrics = c.get("/metrics").text
        assert 'headguard_weights_swaps_total{result="applied"} 2.0' in metrics


def test_a_patch_for_other_weights_is_refused_and_changes_nothing(swap_server, tiny_model):
    server, weights_dir = swap_server
    version = _write_patch(tiny_model[0], weights_dir, base_hash="sha256:" + "0" * 64)
    with server.client(headers=AUTH) as c:
        r = c.post("/admin/v1/weights/activate", json={"version": version})
        assert r.status_code == 400 and "other weights" in r.json()["error"]["message"]
        assert c.get("/admin/v1/weights").json()["active"] == "base"


def test_a_replica_refuses_a_bad_active_version_and_keeps_serving(swap_server, tiny_model, clean_texts):
    """Another replica moved the pointer to a patch this one cannot apply: it keeps its weights."""
    server, weights_dir = swap_server
    version = _write_patch(tiny_model[0], weights_dir, base_hash="sha256:" + "1" * 64)
    WeightsStore(weights_dir).activate(version)
    try:
        for _ in range(50):
            if 'headguard_weights_swaps_total{result="refused"}' in httpx.get(f"{server.url}/metrics").text:
                break
            time.sleep(0.2)
        assert 'headguard_weights_swaps_total{result="refused"}' in httpx.get(f"{server.url}/metrics").text
        r = httpx.post(f"{server.url}/v1/guard/scan", json={"input": clean_texts[0]})
        assert r.status_code == 200 and r.headers["x-headguard-weights-version"] == "base"
    finally:
        WeightsStore(weights_dir).activate("base")


def refused_swaps(server) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith('headguard_weights_swaps_total{result="refused"}'):
            return float(line.split()[1])
    return 0.0


def test_a_version_announced_before_it_reaches_this_replica_is_applied_once_it_does(swap_server, tiny_model):
    """A shared volume can lag the pointer: a missing version is waited for, not refused for good."""
    server, weights_dir = swap_server
    version, refused = new_version_id(), refused_swaps(server)
    (weights_dir / "ACTIVE").write_text(version + "\n")  # the pointer moves first
    try:
        time.sleep(1.5)  # three polls
        assert httpx.get(f"{server.url}/info").json()["weights_version"] == "base"
        _write_patch(tiny_model[0], weights_dir, version=version)
        for _ in range(50):
            if httpx.get(f"{server.url}/info").json()["weights_version"] == version:
                break
            time.sleep(0.2)
        assert httpx.get(f"{server.url}/info").json()["weights_version"] == version
        assert refused_swaps(server) == refused
    finally:
        WeightsStore(weights_dir).activate("base")
        for _ in range(50):
            if httpx.get(f"{server.url}/info").json()["weights_version"] == "base":
                break
            time.sleep(0.2)


@pytest.mark.parametrize("body", [{"version": "v20990101T000000-abcd"}, {"version": "../etc"}, {}])
def test_activating_an_unknown_version_is_a_4xx(swap_server, body):
    server, _ = swap_server
    r = httpx.post(f"{server.url}/admin/v1/weights/activate", json=body, headers=AUTH)
    assert 400 <= r.status_code < 500 and r.json()["error"]["message"]


def test_a_job_that_cannot_neutralise_fails_clearly_and_changes_nothing(swap_server, clean_texts):
    """The in-process queue runs a real repair; on a random model no flagged prompt can be neutralised."""
    server, _ = swap_server
    with server.client(headers=AUTH) as c:
        r = c.post("/admin/v1/jobs", json={"flagged": clean_texts[:4], "clean": clean_texts[10:30],
                                           "options": {"steps": 2}})
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["status"] in ("queued", "running", "failed")
        for _ in range(300):
            job = c.get(f"/admin/v1/jobs/{job['id']}").json()
            if job["status"] not in ("queued", "running"):
                break
            import time

            time.sleep(0.2)
        assert job["status"] == "failed" and "neutralised" in job["error"], job
        assert c.get("/admin/v1/weights").json()["serving"] == "base"
        assert c.get("/admin/v1/jobs").json()["data"][0]["id"] == job["id"]
        assert c.get("/admin/v1/jobs/nope").status_code == 404


def test_job_requests_are_validated(swap_server):
    server, _ = swap_server
    with server.client(headers=AUTH) as c:
        assert c.post("/admin/v1/jobs", json={"flagged": []}).status_code == 400
        assert c.post("/admin/v1/jobs", json={"flagged": ["x"], "clean": ["y"]}).status_code == 400
        assert c.post("/admin/v1/jobs", json={"flagged": ["x"], "options": {"steps": -1}}).status_code == 400
        r = c.post("/admin/v1/jobs", json={"flagged": ["x"]})  # no clean prompts and no lab split
        assert r.status_code == 400 and "clean" in r.json()["error"]["message"]
        r = c.post("/admin/v1/jobs", json={"flagged": ["x"], "clean": ["fine"] * 9 + ["  "]})
        assert r.status_code == 400 and r.json()["error"]["message"] == "clean prompt 9 is empty"
        r = c.post("/admin/v1/jobs", content=json.dumps({"flagged": ["x \udfff"]}),
                   headers={"content-type": "application/json"})
        assert r.status_code == 400 and "flagged prompt 0 is not valid Unicode" in r.json()["error"]["message"]


def _next_announcement(pubsub) -> bytes | None:
    for _ in range(20):  # the subscribe confirmation comes first, and is skipped
        if (message := pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)) is not None:
            return message["data"]
    return None


def test_a_redis_that_lost_its_data_does_not_send_replicas_back_to_base(tiny_model, tmp_path):
    """The pointer is announced on Redis and kept beside the patches, where replicas read it if Redis forgets."""
    client = redis.Redis.from_url("redis://127.0.0.1:6379/13")  # a database of its own
    client.flushdb()  # fails loudly when Redis is not running
    store = WeightsStore(tmp_path, client)
    version = _write_patch(tiny_model[0], tmp_path)
    announcements = client.pubsub()
    announcements.subscribe(CHANNEL)
    store.activate(version)
    assert client.get(ACTIVE_KEY) == version.encode() and store.active() == version
    assert _next_announcement(announcements) == version.encode()
    client.flushdb()  # Redis restarted without persistence
    assert store.active() == version
    store.activate(BASE)
    assert store.active() == BASE and WeightsStore(tmp_path).active() == BASE

