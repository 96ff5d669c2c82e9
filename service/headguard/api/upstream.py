"""Forwarding to an OpenAI-compatible server (the upstream LLM, or the safer model requests are routed to)."""

from __future__ import annotations

import time

import httpx
from starlette.responses import Response, StreamingResponse

from headguard.telemetry.metrics import Metrics

# Hop-by-hop and length headers are the proxy's own business, not the client's.
_DROP = {"content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive"}


class UpstreamError(Exception):
    """The upstream could not be reached or timed out."""


class Upstream:
    def __init__(self, name: str, base_url: str, metrics: Metrics, api_key: str | None = None,
                 timeout_s: float = 120.0):
        self.name = name  # "upstream" or "route": the metrics label
        self.base_url = base_url.rstrip("/")
        self.metrics = metrics
        self.api_key = api_key
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=5.0))

    async def close(self) -> None:
        await self.client.aclose()

    async def _relay(self, response: httpx.Response):
        """The upstream's stream, decoded, closed however it ends (a client gone, an upstream error)."""
        try:
            async for chunk in response.aiter_bytes():
                yield chunk
        except httpx.HTTPError as exc:
            self.metrics.upstream_errors.labels(self.name).inc()
            yield (f'data: {{"error": {{"message": "{self.name} stream broke: {type(exc).__name__}", '
                   '"type": "upstream_error", "code": "upstream_unavailable"}}\n\n').encode()
        finally:
            await response.aclose()

    async def forward(self, path: str, body: dict, authorization: str | None, headers: dict[str, str]) -> Response:
        """POSTs `body` to base_url + path; streams the answer back when the body asks to stream."""
        auth = f"Bearer {self.api_key}" if self.api_key else authorization
        request = self.client.build_request("POST", self.base_url + path, json=body,
                                            headers={"authorization": auth} if auth else {})
        started = time.perf_counter()
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            self.metrics.upstream_errors.labels(self.name).inc()
            raise UpstreamError(f"{self.name} {self.base_url} unavailable: {type(exc).__name__}") from None
        finally:
            self.metrics.upstream_seconds.labels(self.name).observe(time.perf_counter() - started)
        out_headers = {k: v for k, v in response.headers.items() if k.lower() not in _DROP} | headers
        if body.get("stream") and response.status_code == 200:
            return StreamingResponse(self._relay(response), status_code=200, headers=out_headers)
        try:
            content = await response.aread()
        except httpx.HTTPError as exc:
            self.metrics.upstream_errors.labels(self.name).inc()
            raise UpstreamError(f"{self.name} {self.base_url} failed mid-response: {type(exc).__name__}") from None
        finally:
            await response.aclose()
        return Response(content, status_code=response.status_code, headers=out_headers)
