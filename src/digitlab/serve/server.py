"""uvicorn as digitlab runs it: the limits a connection lives under, and a shutdown that
answers every request in flight.

uvicorn with httptools bounds neither a request head's size nor the time its head or body
take to arrive (its keep-alive timeout runs only between requests), so a client dripping
a header line a second, or stalling mid-body, holds its connection forever. BoundedHttp is
uvicorn's httptools protocol with those three bounds; a connection past one is answered
431 or 408 (JSON, as every digitlab error) and closed. uvicorn's own `limit_concurrency`
caps the connections a process holds (503 past it). See
docs/decisions/0003-bounded-http-protocol.md for why this is a subclass.

Server is uvicorn's Server that, as its shutdown begins, answers the requests not yet
being read with a 503 (serve/batcher.py): the rest finish within the graceful shutdown
time, which is longer than the slowest request these limits and the reader's deadline
allow, so nobody gets uvicorn's plain-text 500 of a cancelled request.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import uvicorn

from digitlab.serve.batcher import DEADLINE_S, close_all
from digitlab.serve.logs import LOG_CONFIG

MAX_HEAD_BYTES = 64 * 1024  # request line and headers; a browser's are a few KiB
MAX_HEADERS = 100  # header lines in one request (Apache's LimitRequestFields); browsers send ~20
HEAD_S = 10.0  # from the connection (or the previous answer) to the end of the head
BODY_S = 10.0  # from the end of the head to the end of the body
MAX_CONNECTIONS = 512  # per process; within the usual 1,024 open files
# Longer than the slowest request the limits allow: its body (its head is not waited
# for: uvicorn closes connections that have no request under way) and its reading.
GRACE_S = BODY_S + DEADLINE_S + 2.0

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    HTTPTOOLS = True
except ImportError:  # no httptools: uvicorn's h11, which bounds only the head's size
    HTTPTOOLS = False


def server_settings(log_level: str, access_log: bool) -> dict[str, Any]:
    """uvicorn.Config's settings for every process that serves, alone or as a worker:
    digitlab's logging (serve/logs.py), the connection limits and the shutdown time."""
    protocol: Any = BoundedHttp if HTTPTOOLS else "h11"
    return dict(log_level=log_level, access_log=access_log, log_config=LOG_CONFIG,
                http=protocol, h11_max_incomplete_event_size=MAX_HEAD_BYTES,
                limit_concurrency=MAX_CONNECTIONS, timeout_graceful_shutdown=GRACE_S)


def _answer(status: int, phrase: str, error: str) -> bytes:
    body = json.dumps({"error": error, "detail": None}).encode()
    return (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


TOO_LARGE = _answer(431, "Request Header Fields Too Large",
                    f"the request head is larger than {MAX_HEAD_BYTES:,} bytes")
TOO_MANY = _answer(431, "Request Header Fields Too Large",
                   f"the request has more than {MAX_HEADERS} header lines")
HEAD_LATE = _answer(408, "Request Timeout",
                    f"the request head did not arrive within {HEAD_S:g} s")
BODY_LATE = _answer(408, "Request Timeout",
                    f"the request body did not arrive within {BODY_S:g} s")


if HTTPTOOLS:

    class BoundedHttp(HttpToolsProtocol):  # type: ignore[misc, valid-type]
        """uvicorn's httptools protocol; a request's head is bounded in size and in header
        lines (431) and in time (408), and so is the time its body takes (408). One timer
        per connection, moved at each stage: the head is awaited from the connection or
        the previous answer on, the body from the end of the head. A request refused while
        its head came is never run."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.head_bytes = 0
            self.in_head = True
            self.late = self.loop.call_later(HEAD_S, self._too_late, HEAD_LATE)

        def connection_lost(self, exc: Exception | None) -> None:
            self.late.cancel()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.in_head:  # all of it was head: the head has not ended yet
                self.head_bytes += len(data)
                if self.head_bytes > MAX_HEAD_BYTES:
                    self._refuse(TOO_LARGE)

        def on_header(self, name: bytes, value: bytes) -> None:
            if len(self.headers) >= MAX_HEADERS:
                self._refuse(TOO_MANY)
                return
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            if self.transport.is_closing():  # refused while its head came: never run it
                return
            self.in_head = False
            self.head_bytes = 0
            self.late.cancel()
            self.late = self.loop.call_later(BODY_S, self._too_late, BODY_LATE)
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self.transport.is_closing():
                super().on_body(body)

        def on_message_complete(self) -> None:
            self.late.cancel()
            if not self.transport.is_closing():
                super().on_message_complete()

        def on_response_complete(self) -> None:
            if not self.pipeline:  # else the next request's head has already come
                self.in_head = True
                self.late.cancel()
                self.late = self.loop.call_later(HEAD_S, self._too_late, HEAD_LATE)
            super().on_response_complete()

        def _too_late(self, answer: bytes) -> None:
            """The head or body is late. Where nothing of a request came, the connection is
            only closed (uvicorn's keep-alive timeout usually has done it)."""
            started = not self.in_head or self.head_bytes > 0
            cycle = self.cycle
            answered = cycle is not None and not self.in_head and cycle.response_started
            self._refuse(answer if started and not answered else b"")

        def _refuse(self, answer: bytes) -> None:
            self.late.cancel()
            if self.transport.is_closing():
                return
            if answer:
                self.transport.write(answer)
            self.transport.close()


class Server(uvicorn.Server):
    """uvicorn's Server; its shutdown first answers the requests not yet started."""

    async def shutdown(self, sockets: Any = None) -> None:
        close_all()
        await super().shutdown(sockets=sockets)
