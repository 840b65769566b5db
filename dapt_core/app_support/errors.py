"""Which failures a visitor is shown in their own words, and which only say that the server failed.

The app wraps the message in its UI's error type; the rule of what to show lives here.
"""

from __future__ import annotations

from dapt_core.app_support.jobs import QueueFullError

# Raised with messages meant for the visitor: their mistakes (bad input, unknown keys, missing files) and a full
# training line. UploadError, ImageInputError, AnalysisError and CheckpointError are ValueErrors.
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, KeyError, FileNotFoundError, QueueFullError)
INTERNAL_ERROR = "Something went wrong on the server; the details are in its log."


def user_message(err: Exception) -> str | None:
    """The message to show for a visitor's mistake, or None for a fault of the server's (log it with its
    traceback and show :data:`INTERNAL_ERROR`). A KeyError's message is shown without the quotes ``str`` adds."""
    if not isinstance(err, USER_ERRORS):
        return None
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    return str(err)
