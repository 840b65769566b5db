"""Where foreground masks come from: folders of masks, masks held in memory, and a content-keyed disk cache.

A :class:`MaskProvider` hands :class:`~dapt_core.data.dataset.PromptDataset` one float mask per image, values in
[0, 1] (1 = foreground), at any resolution; the dataset scales it onto the image and crops both together.
Ground-truth masks live in a :class:`MaskFolder`; Grad-CAM masks, recomputed every epoch, in
:class:`InMemoryMasks`; masks from a segmenter are computed once per image content and kept in a
:class:`MaskCache` through :class:`CachedProvider`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import struct
import tokenize
import warnings
import zlib
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np
from PIL import Image, UnidentifiedImageError

from dapt_core.constants import MASK_ASPECT_TOLERANCE, MASK_THRESHOLD, MAX_IMAGE_PIXELS
from dapt_core.fileio import atomic_path
from dapt_core.data.records import DataError, MASK_RANGE_TOLERANCE, Sample

log = logging.getLogger(__name__)

MASK_EXTENSIONS = (".png", ".npy", ".bmp", ".jpg", ".jpeg")
MASK_LEVELS = 255  # the cache stores masks as 8-bit PNGs
HASH_CHUNK_BYTES = 1 << 20
_HEX_KEY = re.compile(r"[0-9a-f]{8,128}")
# What PIL raises on a broken or hostile image file ("Truncated IHDR chunk" is a ValueError)
_IMAGE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError, IndexError, struct.error,
                 zlib.error, Image.DecompressionBombError, Image.DecompressionBombWarning)


@runtime_checkable
class MaskProvider(Protocol):
    """Anything that can give the foreground mask of a sample."""

    def get(self, index: int, sample: Sample) -> np.ndarray | None:
        """The mask of ``sample`` (``index`` is its position in the dataset).

        Returns:
            float32 (H, W) in [0, 1] at any resolution, or ``None`` when there is no mask for it.
        """
        ...


def _as_mask(array: np.ndarray, source: str) -> np.ndarray:
    """Checks and converts an array to a float32 (H, W) mask in [0, 1]."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2 or array.size == 0:
        raise DataError(f"mask {source} must be a 2-D (H, W) array, got shape {array.shape}")
    if array.dtype == bool:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        tol = MASK_RANGE_TOLERANCE
        if not np.isfinite(array).all() or array.min() < -tol or array.max() > 1.0 + tol:
            raise DataError(f"float mask {source} must hold finite values in [0, 1], "
                            f"got [{array.min()}, {array.max()}]")
        return np.clip(array, 0.0, 1.0).astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > MASK_LEVELS:
            raise DataError(f"integer mask {source} must hold 0/1 labels or 0..{MASK_LEVELS} levels, "
                            f"got [{low}, {high}]")
        # 0/1 label maps are as common as 0/255 images.
        if high <= 1:
            return array.astype(np.float32)
        return _binary(array)
    raise DataError(f"mask {source} has unsupported dtype {array.dtype}")


def aspect_ratios_match(mask_size: tuple[int, int], image_size: tuple[int, int],
                        tolerance: float = MASK_ASPECT_TOLERANCE) -> bool:
    """True when a mask of ``(width, height)`` covers the same picture as an image of ``(width, height)``:
    equal sizes, or aspect ratios within ``tolerance`` of each other (it is then rescaled onto the image)."""
    if mask_size == image_size:
        return True
    (mw, mh), (iw, ih) = mask_size, image_size
    if min(mw, mh, iw, ih) <= 0:
        return False
    return abs((mw / mh) / (iw / ih) - 1.0) <= tolerance


def _binary(levels: np.ndarray) -> np.ndarray:
    """8-bit levels -> 0/1 float32: foreground from :data:`~dapt_core.constants.MASK_THRESHOLD` of full scale."""
    return (levels / float(MASK_LEVELS) >= MASK_THRESHOLD).astype(np.float32)


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype a ``.npy`` file's header declares, checked against the file's size and the pixel cap
    (:data:`~dapt_core.constants.MAX_IMAGE_PIXELS`) without reading or allocating the data.

    Raises:
        DataError: no ``.npy`` header (an empty file, a zip or ``.npz`` archive, text), a damaged header, a
            dtype of Python objects, more elements than the cap, or a size that does not match the header.
    """
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            data_bytes = path.stat().st_size - f.tell()
    except (OSError, ValueError, EOFError, SyntaxError, TypeError, tokenize.TokenError) as err:
        raise DataError(f"cannot read mask {path}: not a .npy array ({type(err).__name__}: {err})") from err
    count = math.prod(shape)
    if dtype.hasobject:
        raise DataError(f"cannot read mask {path}: it holds Python objects, which are not loaded")
    if count > MAX_IMAGE_PIXELS:
        raise DataError(f"cannot read mask {path}: shape {shape} is over the cap of {MAX_IMAGE_PIXELS:,} values")
    if count * dtype.itemsize != data_bytes:
        raise DataError(f"cannot read mask {path}: its header declares {shape} {dtype} but the file holds "
                        f"{data_bytes} bytes of data (cut or padded)")
    return tuple(shape), dtype


def read_mask_file(path: Path) -> np.ndarray:
    """Reads a mask file: an image (grayscale, 128 and up is foreground) or a ``.npy`` array.

    Returns:
        float32 (H, W) in [0, 1].
    """
    if path.suffix.lower() == ".npy":
        npy_header(path)  # before numpy allocates what the header claims
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise DataError(f"cannot read mask {path}: {err}") from err
        return _as_mask(array, str(path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise DataError(f"cannot read mask {path}: {img.width}x{img.height} pixels, over the cap of "
                                    f"{MAX_IMAGE_PIXELS:,}")
                gray = np.asarray(img.convert("L"))
    except _IMAGE_ERRORS as err:
        raise DataError(f"cannot read mask {path}: {err}") from err
    return _binary(gray)


class MaskFolder:
    """Masks stored beside a copy of the image tree: ``root/<image path relative to image_root>``.

    For an image ``image_root/a/b.jpg`` it looks for ``root/a/b.jpg`` and then ``root/a/b`` with each of
    :data:`MASK_EXTENSIONS` (``b.png``, ``b.npy``, ...). Use it for data sets with ground-truth masks.

    Args:
        root: the mask tree.
        image_root: the folder the image paths are taken relative to.
    """

    def __init__(self, root: str | Path, image_root: str | Path) -> None:
        self.root = Path(root)
        self.image_root = Path(image_root)
        if not self.root.is_dir():
            raise DataError(f"mask folder {self.root} does not exist or is not a directory")

    def find(self, sample: Sample) -> Path | None:
        """The mask file of ``sample``, or ``None`` if there is none."""
        try:
            relative = sample.path.relative_to(self.image_root)
        except ValueError as err:
            raise DataError(f"image {sample.path} is not under the mask folder's image root "
                            f"{self.image_root}") from err
        candidates = [self.root / relative]
        candidates += [self.root / relative.with_suffix(ext) for ext in MASK_EXTENSIONS]
        return next((path for path in candidates if path.is_file()), None)

    def get(self, index: int, sample: Sample) -> np.ndarray | None:
        path = self.find(sample)
        return None if path is None else read_mask_file(path)


class InMemoryMasks:
    """Masks held in a dict keyed by dataset index, for cues that recompute them as training goes.

    Note that DataLoader workers hold copies: masks set after the workers started reach them only when the
    workers are re-created (``persistent_workers=False``, the default) at the next epoch.
    """

    def __init__(self) -> None:
        self._masks: dict[int, np.ndarray] = {}

    def set(self, index: int, mask: np.ndarray) -> None:
        """Stores the mask of dataset item ``index``: (H, W) in [0, 1], any resolution."""
        self._masks[index] = _as_mask(mask, f"for index {index}")

    def get(self, index: int, sample: Sample) -> np.ndarray | None:
        return self._masks.get(index)

    def clear(self) -> None:
        self._masks.clear()

    def __len__(self) -> int:
        return len(self._masks)

    def __contains__(self, index: object) -> bool:
        return index in self._masks


def image_hash(path_or_bytes: str | Path | bytes) -> str:
    """The sha256 hex digest of an image file's bytes, so a cache entry follows the content, not the path."""
    digest = hashlib.sha256()
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        digest.update(path_or_bytes)
        return digest.hexdigest()
    path = Path(path_or_bytes)
    try:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
                digest.update(chunk)
    except OSError as err:
        raise DataError(f"cannot hash image {path}: {err}") from err
    return digest.hexdigest()


def quantise_mask(mask: np.ndarray) -> np.ndarray:
    """Rounds a [0, 1] mask to the 8-bit levels the cache stores, as uint8 (H, W) in 0..255."""
    return np.round(np.clip(mask, 0.0, 1.0) * MASK_LEVELS).astype(np.uint8)


class MaskCache:
    """Masks on disk, keyed by image content hash, stored as 8-bit PNGs (0..255 for [0, 1]).

    Files live at ``root/<key[:2]>/<key>.png``. Writes go to a temporary file in the same folder and are
    moved into place with :func:`os.replace`, so a reader (or a concurrent writer) never sees half a file.
    Keep one root per mask source (segmenter, prompt, threshold), since the key is only the image.
    """

    image_hash = staticmethod(image_hash)

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path_for(self, key: str) -> Path:
        """Where the mask of ``key`` lives; a key must be a lowercase hex digest."""
        if not isinstance(key, str) or not _HEX_KEY.fullmatch(key):
            raise DataError(f"mask cache key {key!r} is not a hex digest (use image_hash)")
        return self.root / key[:2] / f"{key}.png"

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.path_for(key).is_file()

    def get(self, key: str) -> np.ndarray | None:
        """The cached mask as float32 (H, W) in [0, 1], or ``None`` if ``key`` is not cached."""
        path = self.path_for(key)
        if not path.is_file():
            return None
        try:
            with Image.open(path) as img:
                return np.asarray(img.convert("L"), dtype=np.float32) / MASK_LEVELS
        except _IMAGE_ERRORS as err:
            raise DataError(f"cannot read cached mask {path}: {err}") from err

    def put(self, key: str, mask: np.ndarray) -> None:
        """Stores a float (H, W) mask in [0, 1] for ``key``, atomically."""
        path = self.path_for(key)
        pixels = quantise_mask(_as_mask(mask, f"for cache key {key}"))
        with atomic_path(path) as tmp:
            Image.fromarray(pixels).save(tmp, format="PNG")


class CachedProvider:
    """A :class:`MaskProvider` that reads masks from a :class:`MaskCache`, computing the missing ones.

    Args:
        cache: where masks are kept.
        compute: makes the mask of a sample, float (H, W) in [0, 1] (for example a segmenter).
    """

    def __init__(self, cache: MaskCache, compute: Callable[[Sample], np.ndarray]) -> None:
        self.cache = cache
        self.compute = compute
        # Hashing reads the whole file; remember the digest while the file is unchanged.
        self._keys: dict[tuple[str, int, int], str] = {}

    def key_for(self, sample: Sample) -> str:
        """The cache key (content hash) of a sample's image."""
        try:
            stat = sample.path.stat()
        except OSError as err:
            raise DataError(f"cannot read image {sample.path}: {err}") from err
        stamp = (str(sample.path), stat.st_mtime_ns, stat.st_size)
        if stamp not in self._keys:
            self._keys[stamp] = image_hash(sample.path)
        return self._keys[stamp]

    def get(self, index: int, sample: Sample) -> np.ndarray | None:
        key = self.key_for(sample)
        mask = self.cache.get(key)
        if mask is None:
            log.debug("computing mask for %s", sample.path)
            mask = _as_mask(self.compute(sample), f"computed for {sample.path}")
            self.cache.put(key, mask)
            # Hand out the stored 8-bit version, so the first epoch sees what later epochs read back.
            mask = quantise_mask(mask).astype(np.float32) / MASK_LEVELS
        return mask
