"""The one exception class for user errors."""

from __future__ import annotations

__all__ = ["NlpkitError"]


class NlpkitError(ValueError):
    """A user error: a bad recipe, file, row, name or option.

    The message is one line that names the file, key or row and what was
    expected. The CLI prints it to stderr and exits with code 2.
    """
