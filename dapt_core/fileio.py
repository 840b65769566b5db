"""Atomic file writes: nothing a user saved is ever half-written or lost to a crash mid-write."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# mkstemp creates files readable by their owner only; a finished file gets the permissions of any new file
_UMASK = os.umask(0)
os.umask(_UMASK)
NEW_FILE_MODE = 0o666 & ~_UMASK
# A write that fails with less than this free on its file system failed for want of space (safetensors and
# torch.save report a full disk as their own errors, without the OSError's ENOSPC)
FULL_DISK_FREE_BYTES = 1 << 16


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yields a temporary path beside ``path``; when the block succeeds it is renamed onto ``path``, when it
    raises the temporary file is removed and ``path`` is left as it was.

    Example:
        >>> with atomic_path("out/fig.png") as tmp:
        ...     fig.savefig(tmp, format="png")

    Raises:
        OSError: ``ENOSPC`` naming ``path`` when the disk is full, whatever error the writer reported.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, NEW_FILE_MODE)
        os.replace(tmp, path)
    except Exception as err:
        if _out_of_space(err, path.parent):
            raise OSError(errno.ENOSPC, "No space left on device (nothing was written; a previous file of that "
                          "name is unchanged)", str(path)) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _out_of_space(err: Exception, folder: Path) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(err, (ValueError, TypeError, KeyError)):  # the writer refused its input: not the disk's fault
        return False
    try:
        return shutil.disk_usage(folder).free < FULL_DISK_FREE_BYTES
    except OSError:
        return False


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
