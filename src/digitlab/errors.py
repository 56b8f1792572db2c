"""Errors a user can cause. The CLI turns these into one line on stderr and exit code 1."""


class DigitlabError(Exception):
    """A problem the user can fix; the message says what happened and what to do."""


class DataError(DigitlabError):
    """A dataset file is missing, corrupt or of the wrong shape."""


class RunDirError(DigitlabError):
    """A run directory or checkpoint is missing, incomplete or corrupt."""


class ImageError(DigitlabError):
    """A user image is missing, unreadable, too large, too small or not an image."""
