"""Robust image input: any path, upload, array or PIL image becomes an upright 8-bit RGB image.

Everything that reaches the models goes through :func:`load_image`, so the rest of the
library can assume ``PIL.Image.Image`` in mode ``"RGB"`` and never meets EXIF rotation,
palettes, alpha, CMYK or 16-bit data. Failures raise :class:`ImageInputError` (a
``ValueError``) whose message names the file and the reason, ready to show to a user.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dapt_core.constants import MAX_IMAGE_PIXELS
from dapt_core.errors import DaptError

logger = logging.getLogger(__name__)

# 40 MP is above any camera photo people upload for a demo, and decodes to ~120 MB of RGB.
DEFAULT_MAX_PIXELS = MAX_IMAGE_PIXELS
# Transparent pixels are composited over white: black would read as a dark object to CLIP.
ALPHA_BACKGROUND = (255, 255, 255)
UINT16_MAX = 65535
INT32_MAX = 2**31 - 1
# A float array given as image data must hold intensities in this closed range.
FLOAT_RANGE = (0.0, 1.0)

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, Image.Image, np.ndarray]

# What PIL raises while decoding broken data; ``UnidentifiedImageError`` is handled apart.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


class ImageInputError(DaptError):
    """An image could not be read; the message names the source and the reason."""


def load_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> Image.Image:
    """Read an image from any supported source as an upright RGB image.

    The pixel count is checked against ``max_pixels`` from the header, before any pixel
    data is decoded, so a decompression bomb costs nothing. EXIF orientation is applied.

    Args:
        source: a path (``str`` / ``os.PathLike``), encoded bytes, a binary file object, a
            ``PIL.Image.Image`` (not modified), or a numpy array of shape (H, W), (H, W, 3)
            or (H, W, 4) with dtype uint8 (0..255), uint16 (0..65535) or float (0..1).
        max_pixels: largest accepted width * height.
        name: how to refer to the source in error messages (e.g. an upload's file name);
            defaults to the path, the file object's ``name`` or a generic description.

    Returns:
        A new ``PIL.Image.Image`` in mode ``"RGB"``, fully loaded (no open file behind it).

    Raises:
        ImageInputError: the source is missing, not an image, truncated or corrupt, over
            ``max_pixels``, or an array of an unsupported shape, dtype or value range.
        TypeError: ``source`` is of none of the supported types.
    """
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    label = name or _describe(source)
    if isinstance(source, np.ndarray):
        image = _array_to_image(source, label)
        _check_size(image.size, max_pixels, label)
        return image
    if isinstance(source, Image.Image):
        _check_size(source.size, max_pixels, label)
        _load_pixels(source, label)
        return _finish(source, label)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(bytes(source)), label, max_pixels)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            reason = "is a directory" if path.is_dir() else "no such file"
            raise ImageInputError(f"{label}: {reason}")
        return _decode(path, label, max_pixels)
    if hasattr(source, "read"):
        return _decode(source, label, max_pixels)
    raise TypeError(
        f"load_image: unsupported source type {type(source).__name__}; expected a path, bytes, "
        "a binary file object, a PIL image or a numpy array"
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a loaded PIL image of any mode to 8-bit RGB.

    Alpha (``LA``, ``RGBA``, ``P`` with transparency, ...) is composited over white.
    16-bit data is scaled by 65535 -> 255 rather than clipped. Mode ``"I"`` (32-bit
    integers) is ambiguous in PIL, which uses it as the container for 16-bit data too, so
    non-negative data that fits in 16 bits is scaled by 65535, other non-negative data by
    2**31 - 1, and data with negative values over the whole int32 range. Mode ``"F"``
    is taken as intensities in [0, 1] when it fits there, as 0..255 when it fits there,
    and is otherwise stretched from its own minimum to its maximum.

    Args:
        image: a PIL image of any mode.

    Returns:
        A new image in mode ``"RGB"`` (``image`` itself is never modified).

    Raises:
        ImageInputError: the mode cannot be converted to RGB.
    """
    converted = _convert_mode(image)
    return converted.copy() if converted is image else converted


def image_to_array(image: Image.Image) -> np.ndarray:
    """Return the pixels of a PIL image as a new array.

    Args:
        image: a PIL image of any mode (converted as by :func:`to_rgb`).

    Returns:
        uint8 array of shape (H, W, 3), values 0..255, C-contiguous and writable.
    """
    rgb = image if image.mode == "RGB" else to_rgb(image)
    return np.array(rgb, dtype=np.uint8, copy=True)


def _describe(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<image bytes>"
    if isinstance(source, np.ndarray):
        return "<image array>"
    if isinstance(source, Image.Image):
        filename = getattr(source, "filename", "")
        return str(filename) if filename else "<PIL image>"
    file_name = getattr(source, "name", None)
    return str(file_name) if isinstance(file_name, (str, os.PathLike)) else "<file object>"


def _check_size(size: tuple[int, int], max_pixels: int, label: str) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageInputError(_too_large_message(label, width, height, max_pixels))


def _too_large_message(label: str, width: int, height: int, max_pixels: int) -> str:
    return (
        f"{label}: image is {width}x{height} = {width * height:,} pixels, over the cap of "
        f"{max_pixels:,} pixels (max_pixels); refusing to decode it"
    )


def _decode(fp: Path | BinaryIO, label: str, max_pixels: int) -> Image.Image:
    # PIL only warns between its own limit and twice that; turn the warning into the same
    # error. catch_warnings is process-wide, which is harmless here: the only filter it
    # adds concerns decompression bombs, which every caller wants treated as errors.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            opened = Image.open(fp)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageInputError(f"{label}: {exc} (PIL's limit, Image.MAX_IMAGE_PIXELS)") from exc
        except UnidentifiedImageError as exc:
            raise ImageInputError(f"{label}: not an image file PIL can read") from exc
        except _DECODE_ERRORS as exc:
            raise ImageInputError(f"{label}: not an image file PIL can read ({exc})") from exc
        with opened as image:
            # Image.open has read only the header: reject before decoding any pixels.
            _check_size(image.size, max_pixels, label)
            _load_pixels(image, label)
            return _finish(image, label)


def _load_pixels(image: Image.Image, label: str) -> None:
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageInputError(f"{label}: {exc} (PIL's limit, Image.MAX_IMAGE_PIXELS)") from exc
    except _DECODE_ERRORS as exc:
        raise ImageInputError(f"{label}: truncated or corrupt image data: {exc}") from exc


def _finish(image: Image.Image, label: str) -> Image.Image:
    try:
        upright = ImageOps.exif_transpose(image)
    except _DECODE_ERRORS as exc:
        # A broken EXIF block should not cost the user their image, only its rotation.
        logger.warning("%s: ignoring unreadable EXIF orientation (%s)", label, exc)
        upright = image
    if upright is image:
        converted = _convert_mode(image, label)
        return converted.copy() if converted is image else converted
    return _convert_mode(upright, label)


def _convert_mode(image: Image.Image, label: str = "image") -> Image.Image:
    # Returns ``image`` itself when it is already RGB, so callers holding a fresh image skip a copy.
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        return _composite_over_white(image.convert("RGBA"))
    if mode in _SIXTEEN_BIT_MODES:
        scaled = _scale_to_uint8(np.asarray(image), 0.0, float(UINT16_MAX))
        return Image.fromarray(scaled).convert("RGB")
    if mode == "I":
        return Image.fromarray(_int32_to_uint8(np.asarray(image))).convert("RGB")
    if mode == "F":
        return Image.fromarray(_float_to_uint8(np.asarray(image))).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageInputError(f"{label}: image mode {mode!r} cannot be converted to RGB: {exc}") from exc


def _composite_over_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGB", rgba.size, ALPHA_BACKGROUND)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (values.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _int32_to_uint8(values: np.ndarray) -> np.ndarray:
    low, high = int(values.min()), int(values.max())
    if low >= 0 and high <= UINT16_MAX:
        return _scale_to_uint8(values, 0.0, float(UINT16_MAX))
    if low >= 0:
        return _scale_to_uint8(values, 0.0, float(INT32_MAX))
    return _scale_to_uint8(values, float(-INT32_MAX - 1), float(INT32_MAX))


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if low >= FLOAT_RANGE[0] and high <= FLOAT_RANGE[1]:
        return _scale_to_uint8(values, *FLOAT_RANGE)
    if low >= 0.0 and high <= 255.0:
        return _scale_to_uint8(values, 0.0, 255.0)
    if high == low:
        return np.zeros(values.shape, dtype=np.uint8)
    return _scale_to_uint8(values, low, high)


def _array_to_image(array: np.ndarray, label: str) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImageInputError(f"{label}: array must have shape (H, W), (H, W, 3) or (H, W, 4); got {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageInputError(f"{label}: array is empty, shape {array.shape}")
    pixels = np.ascontiguousarray(_array_to_uint8(array, label))
    if pixels.ndim == 2:
        return Image.fromarray(pixels).convert("RGB")
    if pixels.shape[2] == 4:
        return _composite_over_white(Image.fromarray(pixels))
    return Image.fromarray(pixels)


def _array_to_uint8(array: np.ndarray, label: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return _scale_to_uint8(array, 0.0, float(UINT16_MAX))
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise ImageInputError(f"{label}: float array holds NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < FLOAT_RANGE[0] or high > FLOAT_RANGE[1]:
            raise ImageInputError(
                f"{label}: float array values must lie in [{FLOAT_RANGE[0]}, {FLOAT_RANGE[1]}]; "
                f"got [{low:g}, {high:g}]"
            )
        return _scale_to_uint8(array, *FLOAT_RANGE)
    if np.issubdtype(array.dtype, np.integer):
        # Plain Python ints arrive as int64: accept them when they are 8-bit values.
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ImageInputError(
                f"{label}: {array.dtype} array values must lie in [0, 255]; got [{low}, {high}] "
                "(pass uint16 for 16-bit data)"
            )
        return array.astype(np.uint8)
    raise ImageInputError(f"{label}: unsupported array dtype {array.dtype}; use uint8, uint16 or float in [0, 1]")
