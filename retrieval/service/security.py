"""What a request must be to reach a handler: a known Host, a body within the cap, the API key.

Pure ASGI middlewares (they run before routing and cost a few microseconds):

* :class:`CatchAll` (outermost) answers any error no handler expected with a one-line 500 JSON
  body and logs one line, so neither the client nor the log ever shows a traceback;
* :class:`HostAllowList` answers 403 to a Host header that is not on the allow-list, so a web
  page served under another name that resolves to this machine (DNS rebinding) cannot use it.

* :class:`BodyLimit` answers 413 to a body over the cap, before reading it when its length is
  declared, as soon as it passes the cap when it is chunked.

The API key is a FastAPI dependency (:func:`api_key_check`), so OpenAPI documents it; it is
compared in constant time with :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Security
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException

from .config import API_KEY_HEADER
from .errors import error_body, log_unexpected
from .hosts import HostGuard

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
BODY_OVERHEAD = 64 * 1024  # multipart boundaries and form fields around an upload of the maximum size


async def send_json(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(error_body(message, status)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


class CatchAll:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception as exc:  # noqa: BLE001  (the last line of defence: a server never shows a traceback)
            log_unexpected(f"{scope.get('method')} {scope.get('path')}", exc)
            if not started:
                await send_json(send, 500, f"internal error ({type(exc).__name__}); the server log has a line on it")


class HostAllowList(HostGuard):
    """The Host allow-list of :mod:`retrieval.service.hosts`, refusing with the service's JSON error."""

    async def refuse(self, host: str, send: Send) -> None:
        await send_json(
            send, 403, f"host {host!r} is not allowed; start the service with --allow-host NAME to accept it"
        )


class BodyLimit:
    """413 JSON for a request body over the cap: at once when the request declares its length,
    and as soon as a chunked body passes the cap (the error raised from the body stream reaches
    the JSON error handler, since FastAPI passes HTTP errors met while reading a body through)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await send_json(send, 413, self._message(int(declared)), [(b"connection", b"close")])
            return
        seen = 0

        async def counting() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, self._message(seen))
            return message

        await self.app(scope, counting, send)

    def _message(self, size: int) -> str:
        return f"the request body of {size:,} bytes is over the limit of {self.max_bytes:,} (see serve --max-upload-mb)"


def api_key_check(expected: str | None) -> Callable[..., None]:
    """A FastAPI dependency that accepts a request carrying ``expected`` in ``X-API-Key`` or as
    ``Authorization: Bearer KEY``; with no key configured it accepts every request."""
    header = APIKeyHeader(
        name=API_KEY_HEADER,
        auto_error=False,
        description="the key given to `serve` with --api-key or $RETRIEVAL_API_KEY",
    )
    want = expected.encode() if expected else None

    def check(request: Request, key: str | None = Security(header)) -> None:
        if want is None:
            return
        if key is None:
            auth = request.headers.get("authorization", "")
            key = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        if key is None or not hmac.compare_digest(key.encode(), want):
            raise HTTPException(401, "missing or wrong API key: send it in the X-API-Key header")

    return check
