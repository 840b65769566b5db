"""Finding a registered weight file: an explicit path, checkpoints/, the Hugging Face cache, then a download.

Resolution looks, in order, at an explicit path, at ``checkpoints/`` (``dapt_core.paths.CHECKPOINT_DIR``), at
the Hugging Face cache, and only then at the network, after :func:`dapt_core.weights.online.is_online` has
said the source host answers. Direct downloads are streamed, hashed and renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import logging
import urllib.parse
import urllib.request
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants as hf_constants
from tqdm.auto import tqdm

from dapt_core import paths
from dapt_core.errors import DaptError
from dapt_core.fileio import atomic_path
from dapt_core.weights.online import is_online
from dapt_core.weights.registry import WeightSpec, get_weight_spec

__all__ = ["WeightsIntegrityError", "WeightsNotFoundError", "fetch_weights", "resolve_weights", "weights_status"]

logger = logging.getLogger(__name__)

HF_ETAG_TIMEOUT_S = 5.0  # huggingface_hub's metadata request; its default is 10 s
URL_READ_TIMEOUT_S = 60.0  # socket timeout of a direct download, per read, not for the whole file
DOWNLOAD_CHUNK_BYTES = 1 << 20  # read size while streaming and hashing a download
_FETCH_COMMAND = "python -m dapt_core weights fetch {name}"


class WeightsNotFoundError(DaptError, FileNotFoundError):
    """A weight file is neither given, nor on disk, nor downloadable; the message says how to fetch it."""


class WeightsIntegrityError(DaptError):
    """A downloaded file's sha256 differs from the registered digest (the file is discarded)."""


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
        f"on a machine that is online and copy the file to {looked}, or pass the file path with "
        f"{spec.path_option}."
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
        _check_digest(spec, digest.hexdigest(), spec.url)
    logger.info("downloaded %s to %s (sha256 %s)", spec.name, target, digest.hexdigest())
    return target


def _check_digest(spec: WeightSpec, actual: str, source: str | None) -> None:
    """Refuses a download whose sha256 is not the registered one (when one is registered)."""
    if spec.sha256 is not None and actual != spec.sha256:
        raise WeightsIntegrityError(
            f"download of {spec.name} from {source} has sha256 {actual}, expected {spec.sha256}; the file was "
            "discarded (corrupt or changed upstream)"
        )


def file_sha256(path: str | Path) -> str:
    """The lowercase hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(DOWNLOAD_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _download(spec: WeightSpec) -> Path:
    if spec.hf_repo is not None:
        logger.info("downloading %s from the Hugging Face repo %s", spec.filename, spec.hf_repo)
        path = Path(
            huggingface_hub.hf_hub_download(
                repo_id=spec.hf_repo,
                filename=spec.filename,
                cache_dir=hf_constants.HF_HUB_CACHE,
                etag_timeout=HF_ETAG_TIMEOUT_S,
            )
        )
        if spec.sha256 is not None:
            try:
                _check_digest(spec, file_sha256(path), f"the Hugging Face repo {spec.hf_repo}")
            except WeightsIntegrityError:
                path.unlink(missing_ok=True)  # the cache entry (a link into the blob store, or the file)
                raise
        return path
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
