"""A cap on request bodies that also holds for chunked uploads, which declare no Content-Length."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """Counts body bytes as the app reads them; past `limit` the read fails with a 413 (the app's
    error handlers shape it). A declared Content-Length over the limit fails the first read, before
    a byte is taken."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            too_large = f"the request body is {int(declared)} bytes, over the limit of {self.limit}"
        else:
            too_large = None
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            if too_large:
                raise HTTPException(413, too_large)
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, f"the request body is over the limit of {self.limit} bytes")
            return message

        await self.app(scope, counted, send)
