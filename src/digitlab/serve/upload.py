"""Getting the image bytes out of a request, without trusting its size or its framing.

The body is counted while it streams in and nothing past the limit is kept, so a 1 GB
upload costs at most the limit in memory. Multipart bodies are parsed in memory
(the body is already bounded), so no upload is ever spooled to a temporary file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.types import Receive

FILE_FIELDS = ("file", "image")
MAX_PARTS = 16  # a form with more parts than this is not a digit upload
RAW_TYPES = ("application/octet-stream",)
DRAIN_BYTES = 16 * 2**20

# python-multipart logs a warning for each malformed body before it raises; the client gets
# the same words in its 400, and a server without logging set up for that library would
# print them as bare lines (logging's last-resort handler). Its errors still get through.
logging.getLogger("python_multipart").setLevel(logging.ERROR)


class RequestProblem(Exception):
    """A request the client must fix: answered with `status` and a JSON error body."""

    def __init__(self, status: int, error: str, detail: Any = None,
                 *, close: bool = False) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail
        self.close = close  # the body was not read to its end: the connection cannot be reused


def too_large(max_bytes: int, *, close: bool) -> RequestProblem:
    return RequestProblem(413, f"the request body is larger than the {_size(max_bytes)} limit",
                          {"limit_bytes": max_bytes}, close=close)


async def read_body(receive: Receive, declared: str | None, *, max_bytes: int) -> bytes:
    """The whole body, read from the ASGI `receive` channel (`declared`: the request's
    Content-Length header, if any), or 413 once the declared or counted size passes
    max_bytes.

    Past the limit the body is still read, up to DRAIN_BYTES more, and dropped: a server
    that hangs up on unread data makes the client's kernel report a reset instead of the
    413. Beyond that the connection is closed at once, and a client still sending may
    see only the reset.
    """
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + DRAIN_BYTES:
        raise too_large(max_bytes, close=True)
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):
        whole: bytes = message.get("body", b"")  # the usual case: the body came in one piece
        if len(whole) > max_bytes:
            raise too_large(max_bytes, close=False)
        return whole
    body = bytearray()
    seen = 0
    while True:
        if message["type"] == "http.disconnect":
            raise RequestProblem(400, "the client disconnected before sending the whole body",
                                 close=True)
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen <= max_bytes:
            body += chunk
        elif seen > max_bytes + DRAIN_BYTES:
            raise too_large(max_bytes, close=True)
        if not message.get("more_body", False):
            break
        message = await receive()
    if seen > max_bytes:
        raise too_large(max_bytes, close=False)
    return bytes(body)


def image_bytes(body: bytes, content_type: str | None) -> bytes:
    """The image in a raw image/* or octet-stream body, or in a multipart `file`/`image` field."""
    media, options = parse_options_header(content_type or "")
    kind = media.decode("latin-1").lower()
    if kind == "multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise RequestProblem(400, "multipart body without a boundary in its Content-Type")
        data = _file_field(parse_multipart(body, boundary))
    elif not kind or kind.startswith("image/") or kind in RAW_TYPES:
        data = body
    else:
        raise RequestProblem(
            415, f"Content-Type {kind} is not an image",
            {"accepted": ["multipart/form-data (field 'file' or 'image')", "image/*",
                          "application/octet-stream"]},
        )
    if not data:
        raise RequestProblem(422, "the request holds no image (the body or file is empty)")
    return data


@dataclass
class Part:
    """One part of a multipart body."""

    name: str | None = None
    filename: str | None = None
    content_type: str | None = None
    data: bytearray = field(default_factory=bytearray)


def parse_multipart(body: bytes, boundary: bytes) -> list[Part]:
    """Every part of a multipart/form-data body, held in memory."""
    parts: list[Part] = []
    headers: dict[str, str] = {}
    name_buf, value_buf = bytearray(), bytearray()

    def on_part_begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise RequestProblem(400, f"multipart body has more than {MAX_PARTS} parts")
        parts.append(Part())
        headers.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        name_buf.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        value_buf.extend(data[start:end])

    def on_header_end() -> None:
        headers[name_buf.decode("latin-1").lower()] = value_buf.decode("latin-1")
        name_buf.clear()
        value_buf.clear()

    def on_headers_finished() -> None:
        _, options = parse_options_header(headers.get("content-disposition", ""))
        part = parts[-1]
        part.name = _text(options.get(b"name"))
        part.filename = _text(options.get(b"filename"))
        part.content_type = headers.get("content-type")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].data.extend(data[start:end])

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
    })
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise RequestProblem(400, f"malformed multipart body: {exc}") from None
    return parts


def _file_field(parts: list[Part]) -> bytes:
    for name in FILE_FIELDS:
        for part in parts:
            if part.name == name:
                return bytes(part.data)
    names = sorted({p.name for p in parts if p.name})
    raise RequestProblem(422, "multipart body has no 'file' or 'image' field",
                         {"fields": names})


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", errors="replace")


def _size(n: int) -> str:
    return f"{n / 2**20:.3g} MiB ({n:,} bytes)" if n >= 2**20 else f"{n:,} bytes"
