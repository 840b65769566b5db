"""Which failures a visitor is shown in their own words, and which only say that the server failed.

The app wraps the message in its UI's error type (:func:`guarded`); the rule of what to show lives here. A
message shown to a visitor never carries a path on the server (where uploads are kept, where the project lies):
each absolute path is cut to its last part, the file's own name. A full disk (or a used-up quota) is said as
such, with the fact that nothing was saved: every save is atomic (``fileio.atomic_path``), so a write that
ran out of room leaves no half-written file and an older file of the same name as it was.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import re
from typing import Callable, TypeVar

from dapt_core.errors import DaptError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable)


class QueueFullError(RuntimeError):
    """Too many training jobs are waiting already."""


# Raised with messages meant for the visitor: their mistakes (every DaptError of the library: UploadError,
# ImageInputError, AnalysisError, CheckpointError, ...; the plain ValueError, KeyError or FileNotFoundError of a
# setting checked in the app) and a full training line.
USER_ERRORS: tuple[type[Exception], ...] = (DaptError, ValueError, KeyError, FileNotFoundError, QueueFullError)
INTERNAL_ERROR = "Something went wrong on the server; the details are in its log."
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL = ("The server's disk is full: nothing was saved, and no file was left half-written. Try again "
             "later; the server's owner can free some room.")
# An absolute path of two parts or more (POSIX "/tmp/gradio/ab12/cat.png" or Windows "C:\\Users\\x\\cat.png"),
# not preceded by a word character (so "cpu/cuda" or "a/b" stay); group 1 is its last part.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~])(?:[A-Za-z]:\\|/)(?:[^\s'\"/\\:;,()<>]+[/\\])+([^\s'\"/\\:;,()<>]*)")


def hide_paths(message: str) -> str:
    """``message`` with every absolute path replaced by its last part (``/tmp/gradio/ab12/cat.png`` ->
    ``cat.png``), so that no error tells a visitor where the server keeps its files."""
    return _ABSOLUTE_PATH.sub(lambda m: m.group(1) or "(folder)", message)


def disk_full(err: BaseException | None) -> bool:
    """Whether ``err``, or an error it was raised from or while handling, is an ``OSError`` of a full disk
    (``ENOSPC``) or a used-up disk quota (``EDQUOT``)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def user_message(err: Exception) -> str | None:
    """The message to show for a visitor's mistake or a full disk (:data:`DISK_FULL`), or None for another
    fault of the server's (log it with its traceback and show :data:`INTERNAL_ERROR`). A KeyError's message is
    shown without the quotes ``str`` adds; server paths are hidden (:func:`hide_paths`)."""
    if not isinstance(err, USER_ERRORS):
        return DISK_FULL if disk_full(err) else None
    if isinstance(err, KeyError) and err.args:
        return hide_paths(str(err.args[0]))
    if isinstance(err, OSError) and not isinstance(err, DaptError) and err.strerror:
        return hide_paths(f"{err.strerror}: {err.filename}" if err.filename else err.strerror)
    return hide_paths(str(err))


def guarded(fn: F, to_error: Callable[[str], Exception], *, keep: tuple[type[Exception], ...] = (),
            logger: logging.Logger = log) -> F:
    """``fn`` (a function or a generator function) raising every failure as ``to_error(message)``: a visitor's
    mistake with its :func:`user_message` (logged as a warning), anything else with :data:`INTERNAL_ERROR`
    (logged with its traceback). Errors of a type in ``keep`` (the UI's own) pass unchanged."""
    def translate(err: Exception) -> Exception:
        message = user_message(err)
        if message is None:
            logger.exception("%s failed", fn.__name__)
        else:
            logger.warning("%s refused: %s", fn.__name__, err)
        return to_error(INTERNAL_ERROR if message is None else message)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except keep:
                raise
            except Exception as err:
                raise translate(err) from err
        return stream  # type: ignore[return-value]

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except keep:
            raise
        except Exception as err:
            raise translate(err) from err
    return call  # type: ignore[return-value]
