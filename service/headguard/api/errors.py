"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}, so OpenAI clients read them."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from headguard.api.upstream import UpstreamError
from headguard.errors import InputError
from headguard.jobs.queue import JobsUnavailable

log = logging.getLogger("headguard.api")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error", 502: "upstream_error",
          503: "service_unavailable"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.headers = status, message, code, param, headers


def error_response(status: int, message: str, code: str | None = None, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": _TYPES.get(status, "api_error"), "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    where = ".".join(loc)
    return (f"{where}: {first.get('msg')}" if where else str(first.get("msg"))), (where or None)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.code, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(400, message, "invalid_request", param)

    @app.exception_handler(InputError)
    async def _input(request: Request, exc: InputError):
        return error_response(400, str(exc), "invalid_request")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        code = "request_too_large" if exc.status_code == 413 else None
        return error_response(exc.status_code, str(exc.detail), code, None, getattr(exc, "headers", None))

    @app.exception_handler(UpstreamError)
    async def _upstream(request: Request, exc: UpstreamError):
        return error_response(502, str(exc), "upstream_unavailable")

    @app.exception_handler(JobsUnavailable)
    async def _jobs(request: Request, exc: JobsUnavailable):
        return error_response(503, str(exc), "jobs_unavailable", headers={"retry-after": "10"})

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}", "internal_error")
