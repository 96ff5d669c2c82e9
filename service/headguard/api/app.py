"""The FastAPI application: wires settings, engine, guard, metrics and routes together."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from headguard import __version__
from headguard.api import admin, errors, routes
from headguard.api.body_limit import BodyLimit
from headguard.api.engine import Engine
from headguard.api.flagged import FlaggedLog
from headguard.api.guard import Guard
from headguard.api.upstream import Upstream
from headguard.jobs.queue import LocalJobs, RedisJobs
from headguard.settings import Settings
from headguard.telemetry.metrics import Metrics
from headguard.weights.store import WeightsStore

MAX_BODY_BYTES = 8 * 1024 * 1024


def create_app(settings: Settings, on_load_failure: Callable[[str], None] | None = None) -> FastAPI:
    metrics = Metrics()
    redis = None
    if settings.redis_url:
        from redis import Redis

        redis = Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
        jobs = RedisJobs(settings.redis_url, settings.job_timeout_s)
    else:
        jobs = LocalJobs(settings.resolved_state_dir() / "jobs")
    metrics.watch_jobs(lambda: jobs.list(100))
    store = WeightsStore(settings.resolved_weights_dir(), redis)
    engine = Engine(settings, metrics, store, on_load_failure)
    def secret(value) -> str | None:
        return value.get_secret_value() if value else None

    upstream = (Upstream("upstream", settings.upstream_url, metrics, secret(settings.upstream_api_key),
                         settings.upstream_timeout_s) if settings.upstream_url else None)
    route = (Upstream("route", settings.route_url, metrics, secret(settings.route_api_key),
                      settings.upstream_timeout_s) if settings.route_url else None)
    flagged = FlaggedLog(settings.resolved_state_dir() / "flagged.jsonl", settings.flagged_log_size,
                         settings.flagged_redact)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()  # the model loads in the background: /health answers at once
        yield
        await engine.stop()
        jobs.close()
        if redis is not None:
            redis.close()
        for client in (upstream, route):
            if client is not None:
                await client.close()

    app = FastAPI(title="headguard", version=__version__, lifespan=lifespan,
                  description="An inference-time guard against backdoored language models: it scores each "
                  "prompt by how the suspect model's attention heads collapse, then allows, routes or rejects it.")
    app.state.guard = Guard(settings, engine, metrics, flagged, upstream, route, jobs)
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(admin.router)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        response.headers["x-headguard-weights-version"] = engine.weights_version
        route_ = request.scope.get("route")
        metrics.request_seconds.labels(getattr(route_, "path", "unmatched")).observe(time.perf_counter() - started)
        return response

    return app
