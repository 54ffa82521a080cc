"""Who may talk to the server: the bearer key, and, without a key, the Host a request names.

With `IMG2MUSIC_API_KEY` set, every route but `/health` and the page's own files needs
`Authorization: Bearer <key>`, on the OpenAI routes and (through `langgraph_auth`) on LangGraph's.
Without a key the server trusts whoever reaches it, so it answers only requests whose `Host` is a
loopback name or one the operator listed (`IMG2MUSIC_SERVER_ALLOWED_HOSTS`): a web page that
points its own host name at 127.0.0.1 (DNS rebinding) sends its own Host, and is refused.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from img2music.server.protocol import ApiError, send_error
from img2music.settings import Settings

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def bearer_matches(authorization: str | None, settings: Settings) -> bool:
    """Whether an `Authorization` header carries the server's key (always, when none is set)."""
    if settings.api_key is None:
        return True
    scheme, _, token = (authorization or "").partition(" ")
    expected = settings.api_key.get_secret_value().encode()
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected)


def host_name(host_header: str) -> str:
    """The name in a Host header, without its port; IPv6 without brackets; lower-case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def host_allowed(host_header: str | None, settings: Settings) -> bool:
    """Whether a keyless server answers a request naming this Host (a keyed one answers all)."""
    if settings.api_key is not None:
        return True
    name = host_name(host_header or "")
    return name in LOOPBACK_HOSTS or name in settings.allowed_hosts


class HostCheck:
    """Refuses, with 400, requests whose Host a keyless server does not answer to."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if host_allowed(host, self.settings):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send_error(send, ApiError(
            400, "this server has no API key, so it answers only requests for a loopback host "
            "(127.0.0.1, localhost) or one in IMG2MUSIC_SERVER_ALLOWED_HOSTS",
            code="invalid_host"))
