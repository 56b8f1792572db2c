"""Which requests the server answers at all: the Host and Origin checks, and nosniff.

A server on 127.0.0.1 is still reachable from every web page its user opens. A page on
another site can POST an image to it without asking (a multipart form needs no CORS
preflight), and by DNS rebinding (its own name made to resolve to 127.0.0.1) it can read
the answers too. So a request must name the server by the address it was reached at, a
loopback name where that address is loopback, or a name the server was given
(`allowed_hosts`: what a reverse proxy or a DNS name in front of it sends); and a request
from a page (it carries an Origin header) must come from the server's own origin or the
one --cors allows. Refusals are JSON like every other error.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

NOSNIFF = (b"x-content-type-options", b"nosniff")
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})
ANSWERED_MAX = 64  # Host/address pairs remembered as answered


class RequestGuard:
    """ASGI middleware: 421 for a Host the server does not answer to, 403 for a request
    from another origin than its own or `cors_origin` ('*': any); every answer it lets
    through gets `X-Content-Type-Options: nosniff`, so that no browser reads a JSON answer
    as a script or a page."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: Iterable[str] = (),
                 cors_origin: str | None = None) -> None:
        self.app = app
        self.allowed_hosts = frozenset(_name(h) for h in allowed_hosts)
        self.cors_origin = cors_origin
        # (Host header, server address) pairs already let through: a server sees a handful,
        # and each request need not work its name out again.
        self._answered: set[tuple[str | None, object]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host, origin = first_values(scope["headers"], b"host", b"origin")
        refusal = None
        if (host, scope.get("server")) not in self._answered:
            refusal = self.host_refusal(host, scope.get("server"))
            if refusal is None and len(self._answered) < ANSWERED_MAX:
                self._answered.add((host, scope.get("server")))
        if refusal is None and origin is not None:
            refusal = self.origin_refusal(origin, host)
        if refusal is not None:
            await refusal(scope, receive, send)
            return

        async def send_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), NOSNIFF]
            await send(message)

        await self.app(scope, receive, send_nosniff)

    def host_refusal(self, host: str | None, server: tuple[str, int] | None
                     ) -> JSONResponse | None:
        # A request without Host (HTTP/1.0) comes from no browser, so from no page.
        if host is None or "*" in self.allowed_hosts:
            return None
        name = _name(host)
        if name in self.allowed_hosts or (server is not None and name == _name(server[0])):
            return None
        if server is not None and _is_loopback(server[0]) and (
                name in LOOPBACK_NAMES or _is_loopback(name)):
            return None
        return _refusal(421, f"this server does not answer to the host {name!r} (start it "
                        "with --allowed-host for a name of its own)", {"host": name})

    def origin_refusal(self, origin: str | None, host: str | None) -> JSONResponse | None:
        if origin is None or self.cors_origin in ("*", origin):
            return None
        # Same origin: the page was loaded from this server, under the name it was asked by.
        authority = origin.partition("://")[2].lower()
        if host is not None and authority and authority == host.lower():
            return None
        return _refusal(403, f"requests from pages of {origin} are not allowed (see --cors)",
                        {"origin": origin})


def first_values(headers: Iterable[tuple[bytes, bytes]], *names: bytes) -> list[str | None]:
    """The value of the first header of each name in an ASGI header list (whose names are
    lower case), None for a name it lacks; one pass over the list."""
    values: list[str | None] = [None] * len(names)
    for name, value in headers:
        if name in names:
            at = names.index(name)
            if values[at] is None:
                values[at] = value.decode("latin-1")
    return values


def _name(host: str) -> str:
    """The host name of a Host header or an address: no port, no brackets, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:  # name:port (a bare IPv6 address has several)
        host = host.partition(":")[0]
    return host.rstrip(".")


def _is_loopback(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _refusal(status: int, error: str, detail: object) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status,
                        headers={"X-Content-Type-Options": "nosniff"})
