"""Whether this machine is online, decided once per process and host by one short TCP connect.

The probe runs before any download, so an offline machine gets a clear error within seconds instead of a
minute of HTTP retries inside huggingface_hub or urllib.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

__all__ = ["OFFLINE_ENV_VARS", "ONLINE_PROBE_TIMEOUT_S", "is_online"]

logger = logging.getLogger(__name__)

ONLINE_PROBE_TIMEOUT_S = 2.0  # one TCP connect (DNS included) decides whether the machine is online
OFFLINE_ENV_VARS = ("HF_HUB_OFFLINE", "DAPT_OFFLINE")  # any of these set to a true value means offline
_TRUE_VALUES = frozenset({"1", "true", "yes", "on"})

_ONLINE_CACHE: dict[tuple[str, int], bool] = {}
_ONLINE_LOCK = threading.Lock()


def _env_says_offline() -> bool:
    return any(os.environ.get(var, "").strip().lower() in _TRUE_VALUES for var in OFFLINE_ENV_VARS)


def _tcp_connects(host: str, port: int, timeout: float) -> bool:
    """One TCP connect, bounded by ``timeout`` in total (name resolution ignores socket timeouts, so the
    attempt runs in a daemon thread that is abandoned if it is still resolving when the time is up)."""
    outcome: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    worker = threading.Thread(target=attempt, name=f"dapt-online-probe-{host}", daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(outcome) and outcome[0]


def is_online(host: str = "huggingface.co", timeout: float = ONLINE_PROBE_TIMEOUT_S, port: int = 443) -> bool:
    """Whether ``host:port`` accepts a TCP connection, decided once per process and host.

    Args:
        host: the server a download would use.
        timeout: seconds the whole probe may take, name resolution included.
        port: the TCP port to try (443 for HTTPS).

    Returns:
        False at once, without any network access, when ``HF_HUB_OFFLINE`` or ``DAPT_OFFLINE`` is set to a
        true value; otherwise the (cached) result of one connect attempt.
    """
    if _env_says_offline():
        return False
    key = (host, port)
    with _ONLINE_LOCK:
        if key not in _ONLINE_CACHE:
            _ONLINE_CACHE[key] = _tcp_connects(host, port, timeout)
            logger.debug("online probe %s:%d -> %s", host, port, _ONLINE_CACHE[key])
        return _ONLINE_CACHE[key]
