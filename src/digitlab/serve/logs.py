"""The server's log: uvicorn's lines, word for word, for less of the CPU a request costs.

uvicorn writes one access line per request through `logging`: its formatter copies each
record twice and finds the status phrase through the HTTPStatus enum, and every record
notes its thread, process and calling frame, which no line shows; under load that is a
sizeable share of the server's CPU per request. LOG_CONFIG is uvicorn's own logging
configuration with a formatter that builds the same line directly (uvicorn's own formatter
still writes the coloured lines of a terminal), and lean_records() drops the record fields
nothing prints (the public switches of the Logging HOWTO's "Optimization" section).

Where the access lines go to a file or a pipe (not a terminal), AccessHandler writes them a
block at a time, as nginx's `access_log ... buffer= flush=` does: each line written and
flushed on its own was a system call per request in the event loop. A line waits at most
FLUSH_S.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from typing import IO, Any

from uvicorn.config import LOGGING_CONFIG
from uvicorn.logging import AccessFormatter as UvicornAccessFormatter

LOG_CONFIG: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
LOG_CONFIG["formatters"]["access"]["()"] = "digitlab.serve.logs.AccessFormatter"
LOG_CONFIG["handlers"]["access"]["class"] = "digitlab.serve.logs.AccessHandler"

FLUSH_S = 0.5  # the longest an access line waits to be written (to a file or a pipe)
# The most written at once: whole lines only, within PIPE_BUF (4,096 bytes on Linux), so
# that the lines of several workers sharing a pipe are never cut into each other.
BLOCK = 4096


def lean_records() -> None:
    """Records without the thread and process fields: uvicorn's formats and digitlab's
    never print them. For a serving process only (it is process-wide). The caller's file
    and line are still looked up: skipping that too needs logging's private `_srcfile`,
    and saved no measurable CPU per request."""
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


class AccessFormatter(UvicornAccessFormatter):
    """uvicorn's access line, the same text, built without copying the record and with each
    status phrase worked out once. Lines for a terminal (colours: a person reading along,
    whose terminal costs more than the line) are uvicorn's own to write."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None,
                 style: Any = "%", use_colors: bool | None = None) -> None:
        super().__init__(fmt, datefmt, style, use_colors)
        # The %-format the line is built with (logging.Formatter's own when none is given);
        # None for another style, which uvicorn's formatter then writes.
        self.line = (fmt or "%(message)s") if style == "%" else None
        self._statuses: dict[int, str] = {}

    def get_status_code(self, status_code: int) -> str:
        found = self._statuses.get(status_code)
        if found is None:
            found = self._statuses[status_code] = super().get_status_code(status_code)
        return found

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        if self.use_colors or self.line is None or len(record.args or ()) != 5:
            return super().formatMessage(record)  # colours, or a format or call not uvicorn's
        client_addr, method, full_path, http_version, status_code = record.args  # type: ignore[misc]
        fields = dict(record.__dict__, client_addr=client_addr,
                      request_line=f"{method} {full_path} HTTP/{http_version}",
                      status_code=self.get_status_code(int(status_code)),  # type: ignore[arg-type]
                      levelprefix=record.levelname + ":" + " " * (8 - len(record.levelname)))
        return self.line % fields


def write_held_lines() -> None:
    """Write out the access lines AccessHandler holds (the app calls it as it shuts down:
    uvicorn then ends the process by the signal that stopped it, which skips logging's own
    write-out at exit)."""
    for handler in logging.getLogger("uvicorn.access").handlers:
        if isinstance(handler, AccessHandler):
            handler.flush()


class AccessHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """logging.StreamHandler for the access lines: to a terminal, each line as it comes; to
    a file or a pipe, whole lines a block at a time (at most BLOCK characters), written
    when the block is full, when FLUSH_S has passed since the last write, by a thread of
    its own when no more lines come, and when the app or logging shuts down."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__(stream)
        try:
            self.blocks = not self.stream.isatty()
        except (AttributeError, ValueError):  # no such method, or a closed stream
            self.blocks = False
        self.pending: list[str] = []
        self.size = 0
        self.written = time.monotonic()
        self.writer: threading.Thread | None = None
        self.closed = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if not self.blocks:
            super().emit(record)
            return
        try:
            line = self.format(record) + self.terminator
            if self.pending and self.size + len(line) > BLOCK:
                self._write()
            self.pending.append(line)
            self.size += len(line)
            if time.monotonic() - self.written >= FLUSH_S:
                self._write()
            elif self.writer is None:
                self.writer = threading.Thread(target=self._write_late, daemon=True,
                                               name="digitlab-access-log")
                self.writer.start()
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        if not self.blocks:
            super().flush()
            return
        with self.lock:  # type: ignore[union-attr]
            self._write()

    def close(self) -> None:
        self.closed.set()
        super().close()

    def _write(self) -> None:
        """Write out the pending lines (the handler's lock held)."""
        if self.pending:
            text = "".join(self.pending)
            self.pending.clear()
            self.size = 0
            self.stream.write(text)
            self.stream.flush()
        self.written = time.monotonic()

    def _write_late(self) -> None:
        """Lines that no later line brought out are written FLUSH_S after the last write."""
        while not self.closed.wait(FLUSH_S / 2):
            with self.lock:  # type: ignore[union-attr]
                if self.pending and time.monotonic() - self.written >= FLUSH_S:
                    try:
                        self._write()
                    except Exception:  # a closed or broken stream: nothing more to do
                        return
