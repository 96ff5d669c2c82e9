"""The guard's request flow: score the prompt, decide, then reject, route, forward or generate locally."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from headguard.api.engine import BASE_VERSION, Engine
from headguard.api.errors import ApiError
from headguard.api.flagged import FlaggedLog
from headguard.api.openai_shapes import StreamChunks, completion_body
from headguard.api.policy import ALLOW, REJECT, ROUTE, most_severe
from headguard.api.schemas import ChatCompletionRequest, CompletionRequest
from headguard.api.upstream import Upstream
from headguard.detect.detector import Verdict
from headguard.errors import InputError
from headguard.jobs.queue import LocalJobs, RedisJobs
from headguard.models.generate import Generation, GenerationRequest, cut_at_stop
from headguard.settings import Settings
from headguard.telemetry.metrics import Metrics

log = logging.getLogger("headguard.guard")
UNSCORED = "allow-unscored"  # the decision header when fail-open let a request through


@dataclass
class Scored:
    decision: str
    score: float | None
    verdicts: list[Verdict]

    def headers(self) -> dict[str, str]:
        return {"x-headguard-decision": self.decision,
                "x-headguard-score": "none" if self.score is None else f"{self.score:.4f}"}


class Guard:
    def __init__(self, settings: Settings, engine: Engine, metrics: Metrics, flagged: FlaggedLog,
                 upstream: Upstream | None, route: Upstream | None, jobs: LocalJobs | RedisJobs):
        self.settings, self.engine, self.metrics, self.flagged = settings, engine, metrics, flagged
        self.upstream, self.route, self.jobs = upstream, route, jobs

    # --- checks --------------------------------------------------------------------------------
    def require_ready(self) -> None:
        if not self.engine.ready:
            reason = self.engine.load_error or "the model is still loading"
            raise ApiError(503, f"not ready: {reason}", "not_ready", headers={"retry-after": "5"})

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.engine.model_name:
            raise ApiError(404, f"the model '{name}' does not exist; this guard serves '{self.engine.model_name}'",
                           "model_not_found", "model")

    # --- scoring -------------------------------------------------------------------------------
    async def score(self, texts: list[str], route: str, fail_open: bool) -> Scored:
        """Scores and decides; logs flagged inputs. Scoring faults follow the fail mode when `fail_open`."""
        try:
            verdicts = await self.engine.scan(texts)
        except InputError:
            raise
        except Exception as exc:
            if fail_open and self.settings.fail_mode == "open":
                self.metrics.fail_open.inc()
                log.error("FAIL-OPEN: scoring failed (%s: %s); the request goes through unscored",
                          type(exc).__name__, exc)
                return Scored(UNSCORED, None, [])
            log.error("scoring failed: %s: %s", type(exc).__name__, exc)
            raise ApiError(503, f"scoring failed ({type(exc).__name__}); try again", "scoring_failed") from None
        policy = self.engine.loaded.policy
        decisions = [policy.decide(v.score) for v in verdicts]
        for text, verdict, decision in zip(texts, verdicts, decisions, strict=True):
            self.metrics.inputs.labels(decision).inc()
            if decision != ALLOW:
                self.flagged.add(text, verdict.score, decision, route)
        return Scored(most_severe(decisions), max(v.score for v in verdicts), verdicts)

    def results(self, scored: Scored) -> list[dict]:
        policy = self.engine.loaded.policy
        return [{"score": v.score, "threshold": policy.reject_threshold, "route_threshold": policy.route_threshold,
                 "decision": policy.decide(v.score), "flagged": policy.decide(v.score) != ALLOW,
                 "explanation": v.explanation} for v in scored.verdicts]

    # --- generation endpoints ------------------------------------------------------------------
    async def complete(self, request: Request, path: str, body: ChatCompletionRequest | CompletionRequest,
                       texts: list[str], answer_text: str) -> Response:
        """Scores `texts` (what the model will see), then acts on the decision; the local model answers
        `answer_text`."""
        scored = await self.score(texts, path, fail_open=True)
        headers = scored.headers()
        self.metrics.requests.labels(path, scored.decision).inc()
        enforce = self.engine.loaded.policy.enforce
        action = scored.decision if enforce else ALLOW
        if action == REJECT or (action == ROUTE and self.route is None and not self._repaired_locally()):
            policy = self.engine.loaded.policy
            why = (f"threshold {policy.reject_threshold:.2f}" if action == REJECT else
                   f"over the route threshold {policy.route_threshold:.2f}, and no route target is set")
            raise ApiError(400, f"the guard refused this prompt: its attention heads collapse as under a "
                           f"backdoor trigger (score {scored.score:.2f}, {why})",
                           "content_filter", "messages" if isinstance(body, ChatCompletionRequest) else "prompt",
                           headers)
        payload = body.model_dump(exclude_unset=True)
        auth = request.headers.get("authorization")
        suffix = path.removeprefix("/v1")
        if action == ROUTE:
            if self.route is not None:
                return await self.route.forward(suffix, payload, auth, headers)
            return await self.local(body, answer_text, headers)
        if self.upstream is not None:
            return await self.upstream.forward(suffix, payload, auth, headers)
        return await self.local(body, answer_text, headers)

    def _repaired_locally(self) -> bool:
        return self.engine.weights_version != BASE_VERSION and self.upstream is None

    async def local(self, body: ChatCompletionRequest | CompletionRequest, text: str,
                    headers: dict[str, str]) -> Response:
        """The loaded model answers (no upstream configured, or a routed request on repaired weights)."""
        self.engine.generator()  # a classifier refuses here, with a clear message
        chat = isinstance(body, ChatCompletionRequest)
        if (body.n or 1) > 1 or (isinstance(body, CompletionRequest) and isinstance(body.prompt, list)
                                 and len(body.prompt) > 1):
            raise InputError("the local model answers one prompt with one choice (n=1)")
        limit = self.settings.max_new_tokens
        wanted = (getattr(body, "max_completion_tokens", None) or body.max_tokens or limit)
        req = GenerationRequest(text=text, max_new_tokens=min(wanted, limit),
                                temperature=1.0 if body.temperature is None else body.temperature,
                                top_p=1.0 if body.top_p is None else body.top_p, stop=body.stop_list(), seed=body.seed)
        if body.stream:
            return StreamingResponse(self._events(chat, req), media_type="text/event-stream", headers=headers)
        out = await self.engine.generate(req)
        return JSONResponse(completion_body(chat, self.engine.model_name, out.text, out.finish_reason,
                                            out.prompt_tokens, out.completion_tokens), headers=headers)

    async def _events(self, chat: bool, req: GenerationRequest):
        chunks = StreamChunks(chat, self.engine.model_name)
        if (first := chunks.first()) is not None:
            yield first
        text, sent, stopped, finish = "", 0, False, "stop"
        try:
            async for piece in self.engine.stream(req):
                if isinstance(piece, Generation):
                    finish = piece.finish_reason
                    break
                text += piece
                visible, stopped = cut_at_stop(text, req.stop)
                if len(visible) > sent:
                    yield chunks.piece(visible[sent:])
                    sent = len(visible)
                if stopped:
                    break
        except Exception as exc:  # headers are gone: report in the stream, as OpenAI does
            log.error("generation failed mid-stream: %s: %s", type(exc).__name__, exc)
            yield chunks.error(f"generation failed: {type(exc).__name__}")
            return
        yield chunks.last("stop" if stopped else finish)
