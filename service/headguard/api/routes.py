"""Public routes: guard scan, OpenAI-compatible completions and models, and the ops endpoints."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from headguard.api.guard import Guard
from headguard.api.openai_shapes import chat_input, chat_scored
from headguard.api.schemas import ChatCompletionRequest, CompletionRequest, ScanRequest

router = APIRouter()


def guard_of(request: Request) -> Guard:
    return request.app.state.guard


@router.post("/v1/guard/scan", tags=["guard"], summary="Score texts or a chat for backdoor triggers")
async def scan(body: ScanRequest, request: Request) -> JSONResponse:
    guard = guard_of(request)
    guard.require_ready()
    guard.check_model(body.model)
    if body.messages is not None:
        texts = chat_scored(guard.engine.loaded.clf, body.messages)
    else:
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
    scored = await guard.score(texts, "/v1/guard/scan", fail_open=False)
    guard.metrics.requests.labels("/v1/guard/scan", scored.decision).inc()
    return JSONResponse({"model": guard.engine.model_name, "weights_version": guard.engine.weights_version,
                         "results": guard.results(scored)}, headers=scored.headers())


@router.post("/v1/chat/completions", tags=["openai"], summary="Guarded chat completion")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    guard = guard_of(request)
    guard.require_ready()
    guard.check_model(body.model)
    clf = guard.engine.loaded.clf
    return await guard.complete(request, "/v1/chat/completions", body, chat_scored(clf, body.messages),
                                chat_input(clf, body.messages))


@router.post("/v1/completions", tags=["openai"], summary="Guarded text completion")
async def completions(body: CompletionRequest, request: Request) -> Response:
    guard = guard_of(request)
    guard.require_ready()
    guard.check_model(body.model)
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    return await guard.complete(request, "/v1/completions", body, prompts, prompts[0])


@router.get("/v1/models", tags=["openai"], summary="The served model")
async def models(request: Request) -> dict:
    engine = guard_of(request).engine
    return {"object": "list", "data": [{"id": engine.model_name, "object": "model",
                                        "created": int(engine.started), "owned_by": "headguard"}]}


@router.get("/health", tags=["ops"], summary="Liveness")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready", tags=["ops"], summary="Readiness: model, calibration and weights loaded")
async def ready(request: Request) -> JSONResponse:
    engine = guard_of(request).engine
    if engine.ready:
        return JSONResponse({"ready": True, "weights_version": engine.weights_version})
    reason = engine.load_error or "loading"
    return JSONResponse({"ready": False, "reason": reason}, status_code=503)


@router.get("/info", tags=["ops"], summary="Model, weights, device and policy")
async def info(request: Request) -> dict:
    return guard_of(request).engine.info()


@router.get("/metrics", tags=["ops"], summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    # Rendered off the event loop: the jobs collector may wait on Redis.
    body = await asyncio.to_thread(guard_of(request).metrics.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
