"""The admin API under /admin/v1: bearer token compared in constant time; no token set, no access."""

from __future__ import annotations

import asyncio
import hmac

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from headguard.api.errors import ApiError
from headguard.api.guard import Guard
from headguard.api.policy import Policy


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
    return guard.engine.info()["calibration"] | {"policy": guard.engine.info()["policy"]}


@router.post("/calibration", summary="Recalibrate on clean prompts; the new thresholds apply at once")
async def recalibrate(body: RecalibrateRequest, request: Request) -> dict:
    guard = _guard(request)
    guard.require_ready()
    engine = guard.engine
    engine.check_inputs_each(body.prompts)
    loop = asyncio.get_running_loop()
    cal = await loop.run_in_executor(engine.model_thread, engine.recalibrate, body.prompts, body.target_fpr)
    policy: Policy = engine.loaded.policy
    return {"prompts": cal.n_prompts, "target_fpr": cal.target_fpr, "threshold": cal.threshold,
            "reject_threshold": policy.reject_threshold, "route_threshold": policy.route_threshold}
