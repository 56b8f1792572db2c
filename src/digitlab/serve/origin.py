"""The `--cors` origin check, apart from the app so the serve command can run it without
loading the model (and torch) in the process that only supervises workers."""

from __future__ import annotations

import re

from digitlab.errors import DigitlabError

_ORIGIN = re.compile(r"https?://(?:[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?")


def check_origin(origin: str) -> str:
    """`*` or one origin like https://example.org:8443 (scheme, host, optional port)."""
    found = _ORIGIN.fullmatch(origin)  # the whole text: no trailing newline or path
    if origin == "*" or (found and int(found.group(1) or 0) <= 65535):
        return origin
    raise DigitlabError(f"--cors takes '*' or an origin like https://example.org "
                        f"(scheme://host[:port], no path); got {origin!r}")
