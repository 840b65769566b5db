"""Registry of pretrained weight files and the one place that finds, downloads and loads them.

A weight is known by a short registry name (``"clip-vit-b-16-openai"``, ``"sam-vit-b"``). Resolution looks,
in order, at an explicit path, at ``checkpoints/`` (``dapt_core.paths.CHECKPOINT_DIR``), at the Hugging Face
cache, and only then at the network. Whether the machine is online is decided once per process by a single
short TCP connect, so an offline machine gets a clear :class:`WeightsNotFoundError` within seconds instead of
a minute of HTTP retries.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub
from huggingface_hub import constants as hf_constants
from tqdm.auto import tqdm

from dapt_core import paths
from dapt_core.fileio import atomic_path

__all__ = [
    "UnknownWeightsError",
    "UnsafeCheckpointError",
    "WeightSpec",
    "WeightsIntegrityError",
    "WeightsNotFoundError",
    "fetch_weights",
    "get_weight_spec",
    "is_online",
    "list_weights",
    "register_weights",
    "resolve_weights",
    "safe_torch_load",
    "weights_status",
]

logger = logging.getLogger(__name__)

ONLINE_PROBE_TIMEOUT_S = 2.0  # one TCP connect (DNS included) decides whether the machine is online
HF_ETAG_TIMEOUT_S = 5.0  # huggingface_hub's metadata request; its default is 10 s
URL_READ_TIMEOUT_S = 60.0  # socket timeout of a direct download, per read, not for the whole file
DOWNLOAD_CHUNK_BYTES = 1 << 20  # read size while streaming and hashing a download
OFFLINE_ENV_VARS = ("HF_HUB_OFFLINE", "DAPT_OFFLINE")  # any of these set to a true value means offline
_TRUE_VALUES = frozenset({"1", "true", "yes", "on"})
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_FETCH_COMMAND = "python -m dapt_core weights fetch {name}"

_REGISTRY: dict[str, WeightSpec] = {}
_ONLINE_CACHE: dict[tuple[str, int], bool] = {}
_ONLINE_LOCK = threading.Lock()


class WeightsNotFoundError(FileNotFoundError):
    """A weight file is neither given, nor on disk, nor downloadable; the message says how to fetch it."""


class UnknownWeightsError(ValueError):
    """A registry name that was never registered; the message lists the registered names."""


class WeightsIntegrityError(ValueError):
    """A downloaded file's sha256 differs from the registered digest (the file is discarded)."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds pickled objects other than tensors and plain containers, so it is not loaded."""


@dataclass(frozen=True)
class WeightSpec:
    """Where a pretrained weight file comes from and what it is.

    Exactly one source is used for downloads: ``hf_repo`` when set, else ``url``. A spec with neither can
    still be resolved from ``checkpoints/`` or an explicit path.
    """

    name: str  # registry key users type, e.g. "clip-vit-b-16-openai", "sam-vit-b"
    filename: str  # file name inside checkpoints/ (and in the HF repo when hf_repo is set)
    hf_repo: str | None  # Hugging Face repo that holds `filename`
    url: str | None  # direct download URL (used when hf_repo is None)
    sha256: str | None  # expected lowercase hex digest of the file when known (checked after download)
    size_mb: float | None  # approximate size, shown in `weights list`
    description: str  # one line for people: what the weights are and who made them
    rebuild: str | None = None  # for weights this project makes itself: the command that rebuilds them

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip():
            raise ValueError(f"WeightSpec name must be non-empty, without surrounding spaces, got {self.name!r}")
        if not self.filename or Path(self.filename).name != self.filename or self.filename in {".", ".."}:
            raise ValueError(
                f"WeightSpec {self.name!r}: filename must be a bare file name (it is looked up inside "
                f"checkpoints/), got {self.filename!r}"
            )
        if self.sha256 is not None and not _SHA256_RE.fullmatch(self.sha256):
            raise ValueError(
                f"WeightSpec {self.name!r}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}"
            )
        if self.size_mb is not None and self.size_mb <= 0:
            raise ValueError(f"WeightSpec {self.name!r}: size_mb must be positive, got {self.size_mb}")


def register_weights(spec: WeightSpec) -> None:
    """Adds ``spec`` to the registry; registering the same spec twice is a no-op.

    Raises:
        ValueError: another, different spec is already registered under ``spec.name``.
    """
    existing = _REGISTRY.get(spec.name)
    if existing is not None and existing != spec:
        raise ValueError(f"weights {spec.name!r} are already registered with a different spec: {existing}")
    _REGISTRY[spec.name] = spec


def list_weights() -> list[WeightSpec]:
    """Returns every registered spec, sorted by name."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def get_weight_spec(name: str) -> WeightSpec:
    """Returns the spec registered as ``name``.

    Raises:
        UnknownWeightsError: ``name`` is not registered; the message lists the names that are.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise UnknownWeightsError(f"unknown weights {name!r}; registered weights are: {known}") from None


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


def _download_host(spec: WeightSpec) -> tuple[str, int] | None:
    """The (host, port) a download of ``spec`` connects to; None when it needs no network (file:// URLs)."""
    url = hf_constants.ENDPOINT if spec.hf_repo else spec.url
    if url is None:
        return None
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "file" or not parsed.hostname:
        return None
    default_port = 80 if parsed.scheme == "http" else 443
    return parsed.hostname, parsed.port or default_port


def _display(path: Path) -> str:
    """``path`` relative to the project when it lies inside it (shorter messages), else absolute."""
    try:
        return str(path.relative_to(paths.PROJECT_DIR))
    except ValueError:
        return str(path)


def _checkpoint_file(spec: WeightSpec) -> Path:
    return Path(paths.CHECKPOINT_DIR) / spec.filename


def _hf_cached_file(spec: WeightSpec) -> Path | None:
    if spec.hf_repo is None:
        return None
    cached = huggingface_hub.try_to_load_from_cache(
        spec.hf_repo, spec.filename, cache_dir=hf_constants.HF_HUB_CACHE
    )
    # A non-str result is either None or the "known not to exist" sentinel: both mean not here.
    return Path(cached) if isinstance(cached, str) else None


def weights_status(name: str) -> str:
    """Where ``name`` would be found without downloading, for ``weights list``.

    Returns:
        The checkpoints/ path (relative to the project when inside it), ``"hf-cache"``, or ``"missing"``.
    """
    spec = get_weight_spec(name)
    local = _checkpoint_file(spec)
    if local.is_file():
        return _display(local)
    if _hf_cached_file(spec) is not None:
        return "hf-cache"
    return "missing"


def _not_found(spec: WeightSpec, reason: str) -> WeightsNotFoundError:
    looked = _display(_checkpoint_file(spec))
    places = f"looked for {looked}" + (
        f" and the Hugging Face cache ({spec.hf_repo})" if spec.hf_repo else ""
    )
    if spec.rebuild:
        return WeightsNotFoundError(f"{spec.name} weights ({spec.description}) not found: {places}; {reason}. "
                                    f"They ship with the project; rebuild them with `{spec.rebuild}`.")
    fetch = _FETCH_COMMAND.format(name=spec.name)
    return WeightsNotFoundError(
        f"{spec.name} weights ({spec.description}) not found: {places}; {reason}. Fetch them with `{fetch}` "
        f"on a machine that is online and copy the file to {looked}, or pass the file path with --weights."
    )


def _stream_url_to_checkpoints(spec: WeightSpec) -> Path:
    """Downloads ``spec.url`` into checkpoints/ through a temporary file renamed only when complete and
    verified, so no partial file ever carries the final name."""
    assert spec.url is not None
    target = _checkpoint_file(spec)
    digest = hashlib.sha256()
    with atomic_path(target, suffix=".part") as tmp_path:
        with open(tmp_path, "wb") as out, urllib.request.urlopen(spec.url, timeout=URL_READ_TIMEOUT_S) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=spec.filename, disable=None) as bar:
                while chunk := resp.read(DOWNLOAD_CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if spec.sha256 is not None and digest.hexdigest() != spec.sha256:
            raise WeightsIntegrityError(
                f"download of {spec.name} from {spec.url} has sha256 {digest.hexdigest()}, expected "
                f"{spec.sha256}; the file was discarded (corrupt or changed upstream)"
            )
    logger.info("downloaded %s to %s (sha256 %s)", spec.name, target, digest.hexdigest())
    return target


def _download(spec: WeightSpec) -> Path:
    if spec.hf_repo is not None:
        logger.info("downloading %s from the Hugging Face repo %s", spec.filename, spec.hf_repo)
        return Path(
            huggingface_hub.hf_hub_download(
                repo_id=spec.hf_repo,
                filename=spec.filename,
                cache_dir=hf_constants.HF_HUB_CACHE,
                etag_timeout=HF_ETAG_TIMEOUT_S,
            )
        )
    logger.info("downloading %s from %s", spec.filename, spec.url)
    return _stream_url_to_checkpoints(spec)


def resolve_weights(name: str, path: str | Path | None = None, *, download: bool = True) -> Path:
    """Finds the file of the registered weights ``name``, downloading it only as a last resort.

    Order: (1) ``path`` when given; (2) ``checkpoints/<filename>``; (3) the Hugging Face cache; (4) a download
    when ``download`` is True and the source host answers (HF repos go to the HF cache, URLs to checkpoints/).

    Args:
        name: a registered name, see :func:`list_weights`.
        path: an explicit weight file that overrides every other place.
        download: allow step (4).

    Returns:
        The path of an existing file.

    Raises:
        UnknownWeightsError: ``name`` is not registered.
        WeightsNotFoundError: ``path`` does not exist, or the file is nowhere and cannot be downloaded.
        WeightsIntegrityError: a download did not match the registered sha256.
    """
    spec = get_weight_spec(name)
    if path is not None:
        explicit = Path(path).expanduser()
        if not explicit.is_file():
            what = "is a directory, not a file" if explicit.is_dir() else "does not exist"
            raise WeightsNotFoundError(f"weights file given for {name} {what}: {explicit}")
        return explicit

    local = _checkpoint_file(spec)
    if local.is_file():
        return local
    cached = _hf_cached_file(spec)
    if cached is not None:
        return cached

    if not download:
        raise _not_found(spec, "downloading was not allowed")
    if spec.hf_repo is None and spec.url is None:
        raise _not_found(spec, "these weights have no download source")
    host = _download_host(spec)
    # The probe comes first so an offline machine never enters huggingface_hub's or urllib's retries.
    if host is not None and not is_online(host[0], port=host[1]):
        raise _not_found(spec, f"this machine is offline ({host[0]} cannot be reached)")
    try:
        return _download(spec)
    except WeightsIntegrityError:
        raise
    except Exception as err:  # hub and urllib raise many unrelated types; all mean the same thing here
        raise _not_found(spec, f"the download failed ({type(err).__name__}: {err})") from err


def fetch_weights(name: str) -> Path:
    """Makes ``name`` available locally, downloading it when needed; backs ``weights fetch NAME``.

    Returns:
        The path of the file (in checkpoints/ or the Hugging Face cache).
    """
    resolved = resolve_weights(name, download=True)
    logger.info("%s: %s", name, resolved)
    return resolved


def safe_torch_load(path: str | Path) -> dict[str, Any]:
    """Loads a ``.pth`` state dict with ``weights_only=True``: tensors and plain containers only.

    Args:
        path: a file written by ``torch.save`` holding a dict (e.g. a SAM checkpoint).

    Returns:
        The loaded dict, tensors on the CPU.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the file pickles other objects (code could run on load), so it is refused.
        ValueError: the file holds something other than a dict.
    """
    import torch  # deferred: resolving and listing weights should not pay for importing torch

    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint file does not exist: {file}")
    try:
        loaded = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"{file} holds objects other than tensors and plain containers and will not be loaded "
            f"(unpickling it could run arbitrary code). Re-save it as a plain state dict of tensors. "
            f"Detail: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from err
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{file} holds a {type(loaded).__name__}, expected a dict of tensors")
    return dict(loaded)


_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/{}"

for _spec in (
    WeightSpec(
        name="clip-vit-b-16-openai",
        filename="open_clip_model.safetensors",
        hf_repo="timm/vit_base_patch16_clip_224.openai",
        url=None,
        sha256=None,
        size_mb=599,
        description="CLIP ViT-B/16, OpenAI weights (QuickGELU), via open_clip",
    ),
    WeightSpec(
        name="synth-mini",
        filename="synth-mini.safetensors",
        hf_repo=None,
        url=None,
        sha256=None,
        size_mb=None,
        description="this project's mini-CLIP, trained on its synthetic foreground/background world",
        rebuild="python -m dapt_core synth pretrain",
    ),
    WeightSpec(
        name="sam-vit-b",
        filename="sam_vit_b_01ec64.pth",
        hf_repo=None,
        url=_SAM_URL.format("sam_vit_b_01ec64.pth"),
        sha256=None,
        size_mb=375,
        description="Segment Anything ViT-B checkpoint, Meta AI",
    ),
    WeightSpec(
        name="sam-vit-l",
        filename="sam_vit_l_0b3195.pth",
        hf_repo=None,
        url=_SAM_URL.format("sam_vit_l_0b3195.pth"),
        sha256=None,
        size_mb=1250,
        description="Segment Anything ViT-L checkpoint, Meta AI",
    ),
    WeightSpec(
        name="sam-vit-h",
        filename="sam_vit_h_4b8939.pth",
        hf_repo=None,
        url=_SAM_URL.format("sam_vit_h_4b8939.pth"),
        sha256=None,
        size_mb=2560,
        description="Segment Anything ViT-H checkpoint, Meta AI",
    ),
):
    register_weights(_spec)
del _spec
