"""Which failures a visitor is shown in their own words, and which only say that the server failed.

The app wraps the message in its UI's error type; the rule of what to show lives here. A message shown to a
visitor never carries a path on the server (where uploads are kept, where the project lies): each absolute
path is cut to its last part, the file's own name.
"""

from __future__ import annotations

import re

from dapt_core.app_support.jobs import QueueFullError
from dapt_core.errors import DaptError

# Raised with messages meant for the visitor: their mistakes (every DaptError of the library: UploadError,
# ImageInputError, AnalysisError, CheckpointError, ...; the plain ValueError, KeyError or FileNotFoundError of a
# setting checked in the app) and a full training line.
USER_ERRORS: tuple[type[Exception], ...] = (DaptError, ValueError, KeyError, FileNotFoundError, QueueFullError)
INTERNAL_ERROR = "Something went wrong on the server; the details are in its log."
# An absolute path of two parts or more (POSIX "/tmp/gradio/ab12/cat.png" or Windows "C:\\Users\\x\\cat.png"),
# not preceded by a word character (so "cpu/cuda" or "a/b" stay); group 1 is its last part.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~])(?:[A-Za-z]:\\|/)(?:[^\s'\"/\\:;,()<>]+[/\\])+([^\s'\"/\\:;,()<>]*)")


def hide_paths(message: str) -> str:
    """``message`` with every absolute path replaced by its last part (``/tmp/gradio/ab12/cat.png`` ->
    ``cat.png``), so that no error tells a visitor where the server keeps its files."""
    return _ABSOLUTE_PATH.sub(lambda m: m.group(1) or "(folder)", message)


def user_message(err: Exception) -> str | None:
    """The message to show for a visitor's mistake, or None for a fault of the server's (log it with its
    traceback and show :data:`INTERNAL_ERROR`). A KeyError's message is shown without the quotes ``str`` adds;
    server paths are hidden (:func:`hide_paths`)."""
    if not isinstance(err, USER_ERRORS):
        return None
    if isinstance(err, KeyError) and err.args:
        return hide_paths(str(err.args[0]))
    if isinstance(err, OSError) and not isinstance(err, DaptError) and err.strerror:
        return hide_paths(f"{err.strerror}: {err.filename}" if err.filename else err.strerror)
    return hide_paths(str(err))
