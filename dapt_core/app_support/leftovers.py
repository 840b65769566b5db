"""What killed app processes leave behind, removed when the next app starts; nothing of a running app is touched.

A killed app (``kill -9``, out of memory, a restarted Space) runs no clean-up: its private temporary folder
(``/tmp/dapt-app-*``, see :class:`~dapt_core.app_support.startup.TempFiles`) stays, and a write it was in the
middle of leaves a partial file in the user prompt folder: ``.<name>.<random>.tmp`` of an atomic save or an
upload, ``.hub-pull-*`` of a Hub pull, ``.dapt-write-check-*`` of a preflight check.

Whose they are is told by locks that the kernel drops when a process ends, however it ends. Each app holds

- an exclusive lock on ``.owner`` in its temporary folder, a file that also records its process id, and
- a shared lock on the user prompt folder.

On start, an app removes the temporary folders whose ``.owner`` it can lock (the process that made them no
longer runs; a folder without an ``.owner`` or of another user is left alone). When it can also lock the
user folder exclusively (no other app uses it), it removes the partial files there that no write has touched
for :data:`PARTIAL_MIN_AGE_S`: a command-line run holds no lock, but a write in progress keeps its file fresh.
A lock decides, not a process id: an id can be reused by an unrelated process (and always is, by a restarted
container), a lock cannot. Where ``fcntl`` is missing (Windows), nothing is removed.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)

TEMP_PREFIX = "dapt-app-"  # the app's temporary folders in the system's temporary directory
OWNER_FILE = ".owner"  # in a temporary folder: the process id of the app that made it, locked while it runs
PARTIAL_PATTERNS = (".*.tmp", ".hub-pull-*", ".dapt-write-check-*")  # unfinished writes in the user folder
PARTIAL_MIN_AGE_S = 600.0  # a partial file untouched this long is no write in progress


def hold_owner_lock(folder: Path) -> int | None:
    """Marks ``folder`` as this process's: ``folder/.owner`` records the process id and stays locked until the
    returned file descriptor is closed (or the process ends). None where locks are not available."""
    if fcntl is None:
        return None
    staging = folder / f"{OWNER_FILE}.{os.getpid()}"
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.replace(staging, folder / OWNER_FILE)  # appears locked already: no cleaner can take it in between
    except OSError:
        os.close(fd)
        raise
    return fd


def remove_dead_temp_folders(parent: Path | None = None, prefix: str = TEMP_PREFIX) -> list[Path]:
    """Removes the ``<parent>/<prefix>*`` folders of this user whose ``.owner`` is no longer locked: the app
    process that made them ended without cleaning up. ``parent``: the system's temporary directory.

    Returns:
        The folders removed.
    """
    if fcntl is None:
        return []
    removed = []
    for folder in sorted(Path(parent or tempfile.gettempdir()).glob(f"{prefix}*")):
        try:
            if folder.is_symlink() or not folder.is_dir() or folder.stat().st_uid != os.getuid():
                continue
            fd = os.open(folder / OWNER_FILE, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # gone meanwhile, or no owner recorded: not known to be a leftover
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while the lock is ours: no two cleaners
            owner = os.read(fd, 32).decode(errors="replace").strip()
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
            log.info("removed %s, left by app process %s, which no longer runs", folder, owner or "?")
        except OSError:  # BlockingIOError: the app that made it still runs
            continue
        finally:
            os.close(fd)
    return removed


def claim_user_folder(folder: Path, min_age_s: float = PARTIAL_MIN_AGE_S) -> tuple[int | None, list[Path]]:
    """Takes this app's shared lock on the user prompt folder (made if missing) and, when no other app holds
    one, first removes the partial writes there (:data:`PARTIAL_PATTERNS`) untouched for ``min_age_s``.

    Returns:
        The lock's file descriptor (keep it open while the app runs; None where locks are not available or
        the folder cannot be made) and the partial files removed.
    """
    if fcntl is None:
        return None, []
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
    except OSError as err:
        log.warning("cannot lock the user prompt folder %s: %s", folder, err)
        return None, []
    removed: list[Path] = []
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        log.info("another app uses %s; partial files there are left for it", folder)
    else:
        removed = _remove_partials(Path(folder), time.time() - min_age_s)
    fcntl.flock(fd, fcntl.LOCK_SH)  # waits while another app is cleaning
    return fd, removed


def _remove_partials(folder: Path, cutoff: float) -> list[Path]:
    removed = []
    for pattern in PARTIAL_PATTERNS:
        for path in sorted(folder.glob(pattern)):
            try:
                if path.is_symlink() or _last_touched(path) >= cutoff:
                    continue
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            except OSError:
                log.debug("could not remove %s", path, exc_info=True)
                continue
            removed.append(path)
            log.info("removed the partial file %s, left by a write that did not finish", path)
    return removed


def _last_touched(path: Path) -> float:
    """The latest modification time of ``path`` or, for a folder, of anything inside it."""
    times = [path.lstat().st_mtime]
    if path.is_dir():
        times += [p.lstat().st_mtime for p in path.rglob("*")]
    return max(times)


def release(fd: int | None) -> None:
    """Closes a lock's file descriptor from :func:`hold_owner_lock` or :func:`claim_user_folder`."""
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
