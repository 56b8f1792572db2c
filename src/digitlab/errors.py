"""Errors a user can cause. The CLI turns these into one line on stderr and exit code 1."""


class DigitlabError(Exception):
    """A problem the user can fix; the message says what happened and what to do."""


class DataError(DigitlabError):
    """A dataset file is missing, corrupt or of the wrong shape."""


class RunDirError(DigitlabError):
    """A run directory or checkpoint is missing, incomplete or corrupt."""


class ImageError(DigitlabError):
    """A user image is missing, unreadable, too large, too small or not an image."""


def first_line(exc: BaseException) -> str:
    """A library's exception as a phrase for one of digitlab's error lines: the first line
    of its message, or its type's name where it has none."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
