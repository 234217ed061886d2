"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, for every failure the API answers."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tide.jobs.storage import StorageError
from tide.jobs.store import JobNotFound, StoreUnavailable

logger = logging.getLogger("tide.api")

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
          404: "invalid_request_error",
          405: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
          422: "invalid_request_error", 503: "server_error"}

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


class APIError(Exception):
    """An answer other than success; `param` names the request field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def not_found(kind: str, object_id: str) -> APIError:
    """Another key's objects answer exactly like missing ones."""
    return APIError(404, f"No such {kind} object: {object_id}", param="id", code="not_found")


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def _redacted(request: Request, message: str) -> str:
    """The message with secrets and the service's storage prefix masked (`Services.redact`)."""
    services = getattr(request.app.state, "services", None)
    return message if services is None else services.redact(message)


def install(app: FastAPI) -> None:
    """Route every failure through the OpenAI error shape, its message through the redactor."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, _redacted(request, exc.message), exc.param, exc.code, headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        return error_response(exc.status_code, _redacted(request, str(exc.detail)),
                              code=_HTTP_CODES.get(exc.status_code))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header", "form")]
        param = ".".join(loc) or None
        message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
                            for e in errors[:5])
        return error_response(400, _redacted(request, message), param, "invalid_value")

    @app.exception_handler(JobNotFound)
    async def _no_job(request: Request, exc: JobNotFound):
        return error_response(404, f"No such object: {exc.job_id}", "id", "not_found")

    @app.exception_handler(StoreUnavailable)
    async def _no_store(request: Request, exc: StoreUnavailable):
        return error_response(503, _redacted(request, f"job store unavailable: {exc}"), code="unavailable")

    @app.exception_handler(StorageError)
    async def _storage(request: Request, exc: StorageError):
        logger.error("storage failure on %s: %s", request.url.path, exc)
        return error_response(503, _redacted(request, f"storage unavailable: {exc}"), code="storage_unavailable")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error; the server log has the details", code="internal_error")
