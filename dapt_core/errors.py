"""The library's one error type for bad input: what every entry point shows as a plain message.

Every error the library raises for something a user gave it (a file, a name, a setting, an upload) derives
from :class:`DaptError`. The command line turns it into one line on stderr and exit status 2, the app into
a plain message for the visitor; anything else is a fault of the program and keeps its traceback.
:class:`DaptError` is a ``ValueError``, so code that catches ``ValueError`` keeps working; error classes
that were another built-in type before (``WeightsNotFoundError`` is a ``FileNotFoundError``) keep it as a
second base.

This module imports nothing, so that every module can use it without an import cycle.
"""

from __future__ import annotations

__all__ = ["DaptError", "os_error_message"]


class DaptError(ValueError):
    """Input the library cannot use; the message says what and why, in words meant for the user."""


def os_error_message(err: OSError) -> str:
    """A one-line description of an ``OSError`` (``"cannot write out/p.safetensors: No space left on
    device"``), without errno numbers or Python's repr of the arguments."""
    reason = err.strerror or str(err) or type(err).__name__
    name = err.filename if err.filename is not None else None
    return f"{reason}: {name}" if name is not None else reason
