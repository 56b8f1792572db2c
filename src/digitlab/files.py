"""Atomic file writes: readers see the old file or the new one, never half of one.

The data goes to a temporary file in the destination's directory (a rename is atomic only
within one file system), is flushed to disk, renamed over the destination, and the directory
itself is flushed so that the rename survives a power loss. The temporary file is created
the way open() creates a file (mode 0o666 less the umask), so the result gets the
permissions a plain write would give it; a file that is replaced keeps its own.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO


def _create_temp(path: Path) -> tuple[BinaryIO, Path]:
    """An exclusive new file beside `path`, created as open() creates files."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return open(tmp, "xb"), tmp  # noqa: SIM115  (closed by atomic_output)
        except FileExistsError:
            continue


def fsync_dir(folder: Path) -> None:
    """Flush a directory's entries (a rename in it) to disk, where the platform can."""
    if not hasattr(os, "O_DIRECTORY"):  # Windows: directories cannot be opened this way
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories; the rename still holds
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: Path) -> Iterator[BinaryIO]:
    """Write `path` atomically through the file object this yields.

    `fh.name` is the temporary file's path, so the content can be checked (loaded, compared)
    before it replaces `path`. Leaving the block normally commits it; an exception leaves
    `path` as it was and removes the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fh, tmp = _create_temp(path)
    try:
        with fh:
            with suppress(FileNotFoundError):
                os.fchmod(fh.fileno(), path.stat().st_mode & 0o7777)
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically (see atomic_output)."""
    with atomic_output(path) as fh:
        fh.write(data)
