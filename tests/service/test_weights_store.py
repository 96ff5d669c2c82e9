"""The active-version pointer on a real Redis: announced, and kept beside the patches as well."""

from __future__ import annotations

import redis

from headguard.weights.store import ACTIVE_KEY, BASE, CHANNEL, WeightsStore, new_version_id

REDIS_URL = "redis://127.0.0.1:6379/13"  # a database of its own, emptied first


def _stored_version(root) -> str:
    version = new_version_id()
    (root / version).mkdir()
    (root / version / "manifest.json").write_text("{}")  # enough for exists(); activate() needs a real patch
    return version


def _next_announcement(pubsub) -> bytes | None:
    for _ in range(20):  # the subscribe confirmation comes first, and is skipped
        if (message := pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)) is not None:
            return message["data"]
    return None


def test_a_redis_that_lost_its_data_does_not_send_replicas_back_to_base(tmp_path, monkeypatch):
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()  # fails loudly when Redis is not running
    store = WeightsStore(tmp_path, client)
    version = _stored_version(tmp_path)
    monkeypatch.setattr("headguard.weights.store.Patch.load", lambda folder: None)  # checksum tested elsewhere
    announcements = client.pubsub()
    announcements.subscribe(CHANNEL)
    store.activate(version)
    assert client.get(ACTIVE_KEY) == version.encode() and store.active() == version
    assert _next_announcement(announcements) == version.encode()
    client.flushdb()  # Redis restarted without persistence
    assert store.active() == version
    store.activate(BASE)
    assert store.active() == BASE and WeightsStore(tmp_path).active() == BASE
