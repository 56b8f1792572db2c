"""Where the training log goes: plain lines on stdout (parseable when piped), a progress bar
only on a terminal, and nothing but results with --quiet."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class Console:
    def __init__(self, *, quiet: bool = False, progress: bool | None = None) -> None:
        self.quiet = quiet
        self.show_progress = (sys.stdout.isatty() if progress is None else progress) and not quiet

    def line(self, text: str = "") -> None:
        """Part of the log; hidden by --quiet."""
        if not self.quiet:
            print(text, flush=True)

    def result(self, text: str) -> None:
        """A result line; printed even with --quiet."""
        print(text, flush=True)

    def note(self, text: str) -> None:
        """Side information (data fetching, warnings): stderr, so stdout stays parseable."""
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    @contextmanager
    def progress(self, total: int, description: str) -> Iterator:
        """Yields advance(n) that moves a transient bar; a no-op off a terminal."""
        if not self.show_progress:
            yield lambda n=1: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        with Progress(
            "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn(), transient=True,
        ) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)
