"""The admin API under /admin/v1: bearer token compared in constant time; no token set, no access."""

from __future__ import annotations

import asyncio
import hmac

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from headguard.api.engine import PatchedWeights
from headguard.api.errors import ApiError
from headguard.api.guard import Guard
from headguard.api.policy import Policy
from headguard.jobs.tasks import JobSpec, RepairOptions
from headguard.lab.splits import SPLITS_DIR
from headguard.prompts import text_problem


def _guard(request: Request) -> Guard:
    return request.app.state.guard


def require_admin(request: Request) -> None:
    token = _guard(request).settings.admin_token
    if token is None or not token.get_secret_value():
        raise ApiError(403, "the admin API is disabled: set HEADGUARD_ADMIN_TOKEN to enable it", "admin_disabled")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise ApiError(401, "a valid admin bearer token is required", "invalid_token",
                       headers={"www-authenticate": "Bearer"})


router = APIRouter(prefix="/admin/v1", tags=["admin"], dependencies=[Depends(require_admin)])


@router.get("/flagged", summary="The newest flagged prompts")
async def flagged(request: Request, limit: int = Query(100, ge=1, le=10_000)) -> dict:
    log = _guard(request).flagged
    return {"object": "list", "total": len(log), "data": log.recent(limit)}


@router.delete("/flagged", summary="Empty the flagged-prompt log")
async def clear_flagged(request: Request) -> dict:
    return {"deleted": _guard(request).flagged.clear()}


class RecalibrateRequest(BaseModel):
    prompts: list[str] = Field(min_length=10, max_length=5000, description="Clean prompts (at least 10).")
    target_fpr: float = Field(default=0.01, gt=0, lt=0.5)


@router.get("/calibration", summary="The active calibration")
async def calibration(request: Request) -> dict:
    guard = _guard(request)
    guard.require_ready()
    info = guard.engine.info()
    return info["calibration"] | {"policy": info["policy"]}


@router.post("/calibration", summary="Recalibrate on clean prompts; the new thresholds apply at once")
async def recalibrate(body: RecalibrateRequest, request: Request) -> dict:
    guard = _guard(request)
    guard.require_ready()
    engine = guard.engine
    engine.check_inputs_each(body.prompts)
    loop = asyncio.get_running_loop()
    try:
        cal = await loop.run_in_executor(engine.model_thread, engine.recalibrate, body.prompts, body.target_fpr)
    except PatchedWeights as exc:
        raise ApiError(409, str(exc), "patched_weights") from None
    policy: Policy = engine.loaded.policy
    return {"prompts": cal.n_prompts, "target_fpr": cal.target_fpr, "threshold": cal.threshold,
            "reject_threshold": policy.reject_threshold, "route_threshold": policy.route_threshold}


class JobRequest(BaseModel):
    model_config = {"extra": "forbid"}
    flagged: list[str] | None = Field(default=None, min_length=1, max_length=10_000,
                                      description="Flagged prompts to learn from (default: the flagged-prompt log).")
    clean: list[str] | None = Field(default=None, min_length=10, max_length=5000,
                                    description="Clean prompts (default: a lab model's calibration split).")
    options: RepairOptions = Field(default_factory=RepairOptions)
    activate: bool = Field(default=True, description="Activate the new weights version when the job succeeds.")


def _job_or_404(record: dict | None, job_id: str) -> dict:
    if record is None:
        raise ApiError(404, f"no job {job_id}", "job_not_found")
    return record


@router.post("/jobs", status_code=202, summary="Start a repair job")
async def create_job(body: JobRequest, request: Request) -> dict:
    guard = _guard(request)
    guard.require_ready()
    engine, settings = guard.engine, guard.settings
    newest = body.options.max_flagged  # the repair reads at most this many; the newest matter most
    flagged = (body.flagged if body.flagged is not None
               else [e["text"] for e in reversed(guard.flagged.recent(newest))])[:newest]
    if not flagged:
        raise ApiError(400, "no flagged prompts: the flagged-prompt log is empty and none were given",
                       "no_flagged_prompts", "flagged")
    for field, texts in (("flagged", flagged), ("clean", body.clean or [])):
        for i, text in enumerate(texts):
            if problem := text_problem(text):
                raise ApiError(400, f"{field} prompt {i} {problem}", "invalid_request", field)
    if body.clean is None and not (settings.model / SPLITS_DIR / "calibration.jsonl").exists():
        raise ApiError(400, "this model has no clean split: give clean prompts", "no_clean_prompts", "clean")
    spec = JobSpec(model=str(settings.model.resolve()), calibration=str(engine.calibration_path.resolve()),
                   weights_dir=str(engine.store.root.resolve()), flagged=flagged, clean=body.clean,
                   options=body.options, activate=body.activate)
    return await asyncio.to_thread(guard.jobs.submit, spec)


@router.get("/jobs", summary="Recent repair jobs, newest first")
async def list_jobs(request: Request, limit: int = Query(50, ge=1, le=500)) -> dict:
    return {"object": "list", "data": await asyncio.to_thread(_guard(request).jobs.list, limit)}


@router.get("/jobs/{job_id}", summary="One repair job")
async def get_job(job_id: str, request: Request) -> dict:
    return _job_or_404(await asyncio.to_thread(_guard(request).jobs.get, job_id), job_id)


@router.get("/jobs/{job_id}/events", summary="A repair job's progress events")
async def job_events(job_id: str, request: Request) -> dict:
    jobs = _guard(request).jobs
    _job_or_404(await asyncio.to_thread(jobs.get, job_id), job_id)
    return {"object": "list", "data": await asyncio.to_thread(jobs.events, job_id)}


@router.post("/jobs/{job_id}/cancel", summary="Cancel a queued or running repair job")
async def cancel_job(job_id: str, request: Request) -> dict:
    return _job_or_404(await asyncio.to_thread(_guard(request).jobs.cancel, job_id), job_id)


class ActivateRequest(BaseModel):
    model_config = {"extra": "forbid"}
    version: str = Field(description="A stored version, or 'base' for the unrepaired weights.")


@router.get("/weights", summary="Stored weights versions, the active one and the one this replica serves")
async def weights(request: Request) -> dict:
    guard = _guard(request)
    store = guard.engine.store
    active = await asyncio.to_thread(_or_503, store.active)
    return {"active": active, "serving": guard.engine.weights_version,
            "versions": await asyncio.to_thread(store.versions)}


@router.post("/weights/activate", summary="Activate a weights version on every replica (rollback: an older one)")
async def activate(body: ActivateRequest, request: Request) -> dict:
    guard = _guard(request)
    guard.require_ready()
    store = guard.engine.store
    if not store.exists(body.version):
        raise ApiError(404, f"weights version {body.version} does not exist", "version_not_found", "version")
    # Verified against this replica's model (checksum, weights hash, shapes) before any replica is told.
    engine = guard.engine
    await asyncio.get_running_loop().run_in_executor(engine.model_thread, engine.verify_version, body.version)
    await asyncio.to_thread(_or_503, store.activate, body.version)
    serving = await _sync(engine)
    return {"active": body.version, "serving": serving}


async def _sync(engine) -> str:
    from redis.exceptions import RedisError

    try:
        return await engine.sync_weights()
    except RedisError as exc:
        raise ApiError(503, f"the weights pointer (Redis) is unavailable: {type(exc).__name__}",
                       "weights_unavailable") from None


def _or_503(fn, *args):
    from redis.exceptions import RedisError

    try:
        return fn(*args)
    except RedisError as exc:
        raise ApiError(503, f"the weights pointer (Redis) is unavailable: {type(exc).__name__}",
                       "weights_unavailable") from None
