"""Two job queues with one interface: `RedisJobs` (rq; a separate `headguard worker` runs the jobs)
and `LocalJobs` (a background thread in the server, for one machine without Redis).

A job record: id, status (queued, running, succeeded, failed, cancelled), created/started/ended,
progress {stage, done, total, fraction}, result, error, and a summary of its spec.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from headguard.errors import InputError
from headguard.jobs.tasks import JobCancelled, JobSpec, run_repair

log = logging.getLogger("headguard.jobs")
QUEUE = "headguard-repair"
MAX_EVENTS = 200


class JobsUnavailable(Exception):
    """The job backend cannot be reached (Redis down)."""


def _summary(spec: JobSpec) -> dict:
    return {"flagged": len(spec.flagged), "clean": None if spec.clean is None else len(spec.clean),
            "options": spec.options.model_dump(), "activate": spec.activate}


def _progress(event: dict | None) -> dict | None:
    if not event:
        return None
    total = max(1, event["total"])
    return {"stage": event["stage"], "done": event["done"], "total": event["total"],
            "fraction": round(event["done"] / total, 4)}


class LocalJobs:
    """Jobs in a background thread, one at a time; records persist as JSON files in `folder`."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headguard-job")
        self._lock = threading.Lock()
        self._records: dict[str, dict] = {}
        self._events: dict[str, deque] = {}
        self._cancel: dict[str, threading.Event] = {}
        for path in sorted(self.folder.glob("[!.]*.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                log.error("skipping unreadable job record %s", path)
                continue
            if record["status"] in ("queued", "running"):  # the server stopped under it
                record.update(status="failed", error="the server stopped before this job finished",
                              ended=record.get("ended") or time.time())
            self._records[record["id"]] = record
            self._events[record["id"]] = deque(maxlen=MAX_EVENTS)

    def _save(self, record: dict) -> None:
        tmp = self.folder / f".{record['id']}.json"
        tmp.write_text(json.dumps(record))
        tmp.replace(self.folder / f"{record['id']}.json")

    def submit(self, spec: JobSpec) -> dict:
        job_id = uuid.uuid4().hex[:12]
        record = {"id": job_id, "status": "queued", "created": time.time(), "started": None, "ended": None,
                  "progress": None, "result": None, "error": None, "spec": _summary(spec)}
        with self._lock:
            self._records[job_id] = record
            self._events[job_id] = deque(maxlen=MAX_EVENTS)
            self._cancel[job_id] = threading.Event()
            self._save(record)
        self._executor.submit(self._run, job_id, spec)
        return dict(record)

    def _update(self, job_id: str, **fields) -> None:
        with self._lock:
            self._records[job_id].update(fields)
            self._save(self._records[job_id])

    def _run(self, job_id: str, spec: JobSpec) -> None:
        cancel = self._cancel[job_id]
        if cancel.is_set():
            return
        self._update(job_id, status="running", started=time.time())

        def report(event: dict) -> None:
            self._events[job_id].append(event)
            with self._lock:
                self._records[job_id]["progress"] = _progress(event)

        try:
            result = run_repair(spec, report, cancel.is_set)
        except JobCancelled:
            self._update(job_id, status="cancelled", ended=time.time())
        except InputError as exc:
            self._update(job_id, status="failed", error=str(exc), ended=time.time())
        except Exception as exc:
            log.error("repair job %s crashed:\n%s", job_id, traceback.format_exc())
            self._update(job_id, status="failed", error=f"{type(exc).__name__}: {exc}", ended=time.time())
        else:
            self._update(job_id, status="succeeded", result=result, ended=time.time())

    def get(self, job_id: str) -> dict | None:
        with self._lock:
            record = self._records.get(job_id)
            return dict(record) if record else None

    def events(self, job_id: str) -> list[dict]:
        return list(self._events.get(job_id, ()))

    def list(self, limit: int = 50) -> list[dict]:
        with self._lock:
            records = sorted(self._records.values(), key=lambda r: r["created"], reverse=True)
        return [dict(r) for r in records[:limit]]

    def cancel(self, job_id: str) -> dict | None:
        record = self.get(job_id)
        if record is None:
            return None
        if record["status"] == "queued":
            self._cancel[job_id].set()
            self._update(job_id, status="cancelled", ended=time.time())
        elif record["status"] == "running":
            self._cancel[job_id].set()  # the job stops at its next progress step
        return self.get(job_id)

    def close(self) -> None:
        for event in self._cancel.values():
            event.set()
        self._executor.shutdown(wait=False, cancel_futures=True)


class RedisJobs:
    """Jobs on an rq queue. A worker's heartbeat key tells a running job from one whose worker died."""

    HEARTBEAT = "headguard:job:{}:alive"
    EVENTS = "headguard:job:{}:events"
    INDEX = "headguard:jobs"

    def __init__(self, url: str, timeout_s: int = 3600):
        from redis import Redis
        from rq import Queue
        from rq.serializers import JSONSerializer

        self.redis = Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self.queue = Queue(QUEUE, connection=self.redis, serializer=JSONSerializer)
        self.timeout_s = timeout_s

    def _call(self, fn, *args, **kwargs):
        from redis.exceptions import RedisError

        try:
            return fn(*args, **kwargs)
        except RedisError as exc:
            raise JobsUnavailable(f"the job queue (Redis) is unavailable: {type(exc).__name__}") from None

    def submit(self, spec: JobSpec) -> dict:
        job_id = uuid.uuid4().hex[:12]

        def enqueue():
            with self.redis.pipeline() as pipe:  # one transaction: no job runs unlisted, none is listed unqueued
                self.queue.enqueue_call("headguard.jobs.worker.rq_repair", args=(spec.model_dump(),),
                                        job_id=job_id, timeout=self.timeout_s, result_ttl=7 * 86400,
                                        failure_ttl=7 * 86400, meta={"created": time.time(), "spec": _summary(spec)},
                                        pipeline=pipe)
                pipe.zadd(self.INDEX, {job_id: time.time()})
                pipe.execute()

        self._call(enqueue)
        return self.get(job_id)

    def get(self, job_id: str) -> dict | None:
        return self._call(self._get, job_id)

    def _get(self, job_id: str) -> dict | None:
        from rq.exceptions import NoSuchJobError
        from rq.job import Job
        from rq.serializers import JSONSerializer

        try:
            job = Job.fetch(job_id, connection=self.redis, serializer=JSONSerializer)
        except NoSuchJobError:
            return None
        state = job.get_status(refresh=True)
        status = state.value if state is not None else "queued"
        meta = job.get_meta(refresh=True)
        error = None
        mapped = {"finished": "succeeded", "failed": "failed", "started": "running", "stopped": "cancelled",
                  "canceled": "cancelled"}.get(status, "queued")
        if mapped == "running" and not self.redis.exists(self.HEARTBEAT.format(job_id)):
            started = job.started_at.timestamp() if job.started_at else 0
            if time.time() - started > 15:  # no heartbeat for a while: its worker is gone
                mapped, error = "failed", "the worker running this job stopped (no heartbeat)"
        if mapped == "failed" and error is None:
            error = meta.get("error") or _last_line(job.exc_info)
        return {"id": job_id, "status": mapped, "created": meta.get("created"),
                "started": job.started_at.timestamp() if job.started_at else None,
                "ended": job.ended_at.timestamp() if job.ended_at else None,
                "progress": _progress(meta.get("last_event")),
                "result": job.return_value() if mapped == "succeeded" else None,
                "error": error, "spec": meta.get("spec")}

    def events(self, job_id: str) -> list[dict]:
        raw = self._call(self.redis.lrange, self.EVENTS.format(job_id), 0, -1)
        return [json.loads(e) for e in raw]

    def list(self, limit: int = 50) -> list[dict]:
        ids = self._call(self.redis.zrevrange, self.INDEX, 0, limit - 1)
        return [r for r in (self.get(i.decode()) for i in ids) if r is not None]

    def cancel(self, job_id: str) -> dict | None:
        record = self.get(job_id)
        if record is None:
            return None

        def cancel():
            from rq.command import send_stop_job_command
            from rq.exceptions import InvalidJobOperation
            from rq.job import Job
            from rq.serializers import JSONSerializer

            try:
                if record["status"] == "queued":
                    Job.fetch(job_id, connection=self.redis, serializer=JSONSerializer).cancel()
                elif record["status"] == "running":
                    send_stop_job_command(self.redis, job_id, serializer=JSONSerializer)
            except InvalidJobOperation:  # it ended (or was cancelled) in the meantime
                pass

        self._call(cancel)
        for _ in range(50):  # a stop takes effect within a moment; answer with the settled state
            record = self.get(job_id) or record
            if record["status"] not in ("queued", "running"):
                break
            time.sleep(0.1)
        return record

    def close(self) -> None:
        self.redis.close()


def _last_line(text: str | None) -> str | None:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else None
