"""The server's log: uvicorn's lines, word for word, for less of the CPU a request costs.

uvicorn writes one access line per request through `logging`: its formatter copies each
record twice and finds the status phrase through the HTTPStatus enum, and every record
notes its thread, process and calling frame, which no line shows. In-process that is
23 us a line; under load (serve_load --workers 2, access log on against off) it raised
the server's CPU from 0.48 to 0.56 ms a request. LOG_CONFIG is uvicorn's own logging
configuration with a formatter that builds the same line directly (13 us; uvicorn's own
formatter still writes the coloured lines of a terminal), and
lean_records() drops the record fields nothing prints (the Logging HOWTO's
"Optimization" switches: 9.8 us a line in all).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from uvicorn.config import LOGGING_CONFIG
from uvicorn.logging import AccessFormatter as UvicornAccessFormatter

LOG_CONFIG: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
LOG_CONFIG["formatters"]["access"]["()"] = "digitlab.serve.logs.AccessFormatter"


def lean_records() -> None:
    """Records without the thread, process and caller fields: uvicorn's formats and
    digitlab's never print them. For a serving process only (it is process-wide)."""
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # no walk up the stack for the caller's file and line


class AccessFormatter(UvicornAccessFormatter):
    """uvicorn's access line, the same text, built without copying the record and with each
    status phrase worked out once. Lines for a terminal (colours: a person reading along,
    whose terminal costs more than the line) are uvicorn's own to write."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._statuses: dict[int, str] = {}

    def get_status_code(self, status_code: int) -> str:
        found = self._statuses.get(status_code)
        if found is None:
            found = self._statuses[status_code] = super().get_status_code(status_code)
        return found

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        if (self.use_colors or type(self._style) is not logging.PercentStyle
                or len(record.args or ()) != 5):
            return super().formatMessage(record)  # colours, or a format or call not uvicorn's
        client_addr, method, full_path, http_version, status_code = record.args  # type: ignore[misc]
        fields = dict(record.__dict__, client_addr=client_addr,
                      request_line=f"{method} {full_path} HTTP/{http_version}",
                      status_code=self.get_status_code(int(status_code)),  # type: ignore[arg-type]
                      levelprefix=record.levelname + ":" + " " * (8 - len(record.levelname)))
        return self._style._fmt % fields  # type: ignore[operator]
