"""Request size limits, enforced on the byte stream so an oversized or chunked body is refused while it arrives.

Starlette's own body limit answers in plain text; this one answers in OpenAI's error shape, which clients parse."""
from __future__ import annotations

import json

from tide.api.errors import error_body


class BodyLimit:
    """ASGI middleware: uploads (`POST /v1/files`) may carry `upload_bytes`, every other request `request_bytes`."""

    def __init__(self, app, request_bytes: int, upload_bytes: int) -> None:
        self.app, self.request_bytes, self.upload_bytes = app, request_bytes, upload_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.upload_bytes if scope["path"].rstrip("/") == "/v1/files" else self.request_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _too_large(send, limit)
        state = {"seen": 0, "started": False, "refused": False}

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request" and not state["refused"]:
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > limit:
                    # Answer now and tell the app the client left: whatever it does next is dropped.
                    state["refused"] = True
                    if not state["started"]:
                        state["started"] = True
                        await _too_large(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if state["refused"]:
                return
            state["started"] = state["started"] or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["refused"]:
                raise


async def _too_large(send, limit: int) -> None:
    body = json.dumps(error_body(413, f"request body larger than the limit of {limit} bytes",
                                 code="request_too_large")).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
