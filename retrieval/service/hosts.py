"""Which Host names a local server answers: a guard against DNS rebinding.

A web page served under a name that its owner later points at 127.0.0.1 runs in the browser
with that name as its origin, so same-origin checks pass; only the Host header tells it
apart. The app (``ui/``) and the search service (``retrieval/service/``) answer the names on an
allow-list (the loopback names, the bound address, and names the user adds) and refuse every
other request, page, file or WebSocket, with 403. Plain ASGI: no web framework needed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlparse

LOOPBACK = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")


def allowed_hosts(address: str, extra: Iterable[str] = ()) -> list[str]:
    """The loopback names, ``address`` (unless it is a wildcard, which names no host), and ``extra``."""
    names = [*LOOPBACK]
    if address not in WILDCARDS:
        names.append(address)
    names += [n for name in extra for n in name.split(",")]
    out: list[str] = []
    for name in names:
        name = name.strip().lower().strip("[]").rstrip(".")
        if name and name not in out:
            out.append(name)
    return out


def host_name(header: str | None) -> str | None:
    """The host name in a Host header (``name``, ``name:port``, ``[::1]:port``), lower case; None when malformed."""
    if not header:
        return None
    try:
        parsed = urlparse(f"//{header}")
        _ = parsed.port  # a port that is not a number is malformed
    except ValueError:
        return None
    if parsed.hostname is None or parsed.username or parsed.password or parsed.path or parsed.query:
        return None
    return parsed.hostname.lower().rstrip(".")


class HostGuard:
    """ASGI middleware: requests and WebSockets whose Host is not in ``allowed`` get 403 and reach
    nothing. :meth:`refuse` writes the 403; a server with its own error format overrides it."""

    def __init__(self, app: Callable[..., Awaitable[None]], allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = frozenset(allowed)

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), None)
        if host_name(header) in self.allowed:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":  # closing before accepting: the server answers the handshake with 403
            await send({"type": "websocket.close", "code": 1008})
            return
        await self.refuse(header or "", send)

    async def refuse(self, host: str, send: Callable[..., Any]) -> None:
        body = b"403: this app answers only its own host names (see --allow-host)\n"
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
