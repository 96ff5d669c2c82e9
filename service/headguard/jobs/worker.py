"""The rq side: the job function a worker runs, and `headguard worker`."""

from __future__ import annotations

import json
import logging
import os
import threading
import time

from headguard.jobs.queue import MAX_EVENTS, QUEUE, RedisJobs
from headguard.jobs.tasks import JobSpec, run_repair

HEARTBEAT_S = 3
log = logging.getLogger("headguard.worker")


def rq_repair(spec: dict) -> dict:
    """Runs in the worker's work horse; reports progress to Redis and keeps a heartbeat alive."""
    from redis.exceptions import RedisError
    from rq import get_current_job

    job = get_current_job()
    redis = job.connection
    alive_key, events_key = RedisJobs.HEARTBEAT.format(job.id), RedisJobs.EVENTS.format(job.id)
    stop = threading.Event()
    parent = os.getppid()

    def heartbeat() -> None:
        while not stop.is_set():
            if os.getppid() != parent:  # the worker that started this work horse is gone: so is the job
                os._exit(70)
            try:
                redis.set(alive_key, "1", ex=HEARTBEAT_S * 3)
            except Exception:  # a Redis hiccup must not end the heartbeat for good
                pass
            stop.wait(HEARTBEAT_S)

    last_saved = [0.0]

    def report(event: dict) -> None:
        try:
            redis.rpush(events_key, json.dumps(event))
            redis.ltrim(events_key, -MAX_EVENTS, -1)
            redis.expire(events_key, 7 * 86400)
            if time.monotonic() - last_saved[0] > 0.5 or event["done"] == event["total"]:
                job.meta["last_event"] = event
                job.save_meta()
                last_saved[0] = time.monotonic()
        except RedisError as exc:  # a lost progress event must not cost the repair it reports on
            log.warning("progress not reported (%s: %s)", type(exc).__name__, exc)

    beat = threading.Thread(target=heartbeat, daemon=True)
    beat.start()
    try:
        return run_repair(JobSpec.model_validate(spec), report, redis=redis)
    except Exception as exc:
        job.meta["error"] = f"{type(exc).__name__}: {exc}"
        job.save_meta()
        raise
    finally:
        stop.set()
        redis.delete(alive_key)


def work(redis_url: str, metrics_host: str = "127.0.0.1", metrics_port: int = 0) -> None:
    """Runs jobs until stopped; with a metrics port, serves the worker's /metrics beside it."""
    from prometheus_client import start_http_server
    from redis import Redis
    from rq import Queue, Worker
    from rq.serializers import JSONSerializer

    from headguard.telemetry.metrics import worker_registry

    connection = Redis.from_url(redis_url)
    queue = Queue(QUEUE, connection=connection, serializer=JSONSerializer)
    worker = Worker([queue], connection=connection, serializer=JSONSerializer)
    if metrics_port:
        jobs = RedisJobs(redis_url)
        registry = worker_registry(lambda: jobs.list(100), lambda: worker.get_current_job_id() is not None)
        try:
            start_http_server(metrics_port, addr=metrics_host, registry=registry)
        except OSError as exc:  # metrics are one feature: the worker still runs jobs without them
            log.warning("worker metrics are off: cannot listen on %s:%d (%s)", metrics_host, metrics_port, exc)
    worker.work(with_scheduler=False)
