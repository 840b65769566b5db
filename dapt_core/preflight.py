"""Checks that every entry point makes before a model loads or an epoch runs: a bad input is found in seconds,
not after an epoch, and nothing is written when one is refused.

- :func:`check_writable`: the output file (or folder) can be created where it is asked for; the check leaves
  nothing behind (no folder is made, the probe file is removed).
- :func:`check_images`: every image of a set opens as an image, by its header and a cheap look at its data
  (PNG chunks' checksums, a JPEG decoded at 1/8 scale), without decoding it in full.
- :func:`check_masks`: every training image of a mask folder has a mask that covers the same picture (the
  aspect-ratio rule :data:`~dapt_core.constants.MASK_ASPECT_TOLERANCE` that analysis applies too).
- :func:`check_not_empty`: a split to evaluate or segment has images.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
import time
import warnings
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

from PIL import Image, UnidentifiedImageError

from dapt_core.constants import MASK_ASPECT_TOLERANCE, MAX_IMAGE_PIXELS
from dapt_core.data.masks import aspect_ratios_match, npy_header
from dapt_core.data.records import DataError, Sample
from dapt_core.errors import DaptError

log = logging.getLogger(__name__)

__all__ = ["OutputError", "check_images", "image_problem", "check_masks", "check_not_empty",
           "check_writable"]

BAD_FILES_SHOWN = 3  # a refusal names at most this many bad files (and says how many there are)
PASSED_MEMORY = 200_000  # files remembered as checked (by path, size and mtime), so a second check is a stat
JPEG_DRAFT_SCALE = 8  # a JPEG is decoded at 1/8 of its size (libjpeg's DCT scaling): cheap, and it reads it all
_BROKEN = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error, zipfile.BadZipFile)


class OutputError(DaptError):
    """An output path that cannot be written: a folder where a file is asked for, a file in the way, no
    permission, a read-only or full disk."""


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: str | Path, what: str = "--out", *, folder: bool = False) -> None:
    """Refuses an output path that cannot be written, before any work; writes nothing that stays.

    Args:
        path: the file (or, with ``folder``, the folder) a command will write.
        what: how messages name it (the option, e.g. ``"--out"``).
        folder: ``path`` is a folder to fill (it may exist already), not a file.

    Raises:
        OutputError: ``path`` is a folder (for a file) or a file (for a folder), a file stands where a parent
            folder should be, or the nearest existing parent folder does not take a new file.
    """
    path = Path(path).expanduser()
    if path.exists() and path.is_dir() != folder:
        kind = "a folder" if path.is_dir() else "a file"
        raise OutputError(f"{what} {path} is {kind}; name {'a folder' if folder else 'a file'} to write")
    parent = _nearest_existing(path if folder else path.parent)
    if not parent.is_dir():
        raise OutputError(f"{what} {path} cannot be written: {parent} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".dapt-write-check-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputError(f"{what} {path} cannot be written in {parent} "
                          f"({err.strerror or type(err).__name__})") from err


def image_problem(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
    """Why ``path`` is not a usable image (None when it is), from its header and a cheap read of its data; the
    reason never holds the path."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    return f"{width}x{height} pixels, over the cap of {max_pixels:,}"
                if width == 0 or height == 0:
                    return "an empty image"
                if img.format == "JPEG":
                    img.draft("RGB", (max(1, width // JPEG_DRAFT_SCALE), max(1, height // JPEG_DRAFT_SCALE)))
                    img.load()
                else:
                    img.verify()
    except FileNotFoundError:
        return "no such file"
    except UnidentifiedImageError:
        return "not an image file"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "too many pixels (a decompression bomb?)"
    except _BROKEN as err:
        return f"truncated or corrupt ({type(err).__name__})"
    return None


_PASSED: OrderedDict[tuple, None] = OrderedDict()  # images that passed check_images, by _stamp


def _stamp(path: Path, max_pixels: int) -> tuple | None:
    """What identifies a checked file: a changed file (size or mtime) is checked again."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return str(path), stat.st_size, stat.st_mtime_ns, max_pixels


def check_images(samples: Sequence[Sample], what: str = "training", *, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Refuses a set of images with any file that is not a readable image, naming the first few.

    Each file's header is read and its data looked at cheaply (see the module docstring); no image is decoded
    in full (benchmarks/bench_preflight.py: about a quarter of the cost of decoding each once). A file that
    passed before and has not changed (size, mtime) is not looked at again.

    Raises:
        DataError: the bad files (at most :data:`BAD_FILES_SHOWN`, with the count) and why each is bad.
    """
    started = time.perf_counter()
    bad = []
    for sample in {s.path: s for s in samples}.values():
        stamp = _stamp(Path(sample.path), max_pixels)
        if stamp is not None and stamp in _PASSED:
            continue
        reason = image_problem(Path(sample.path), max_pixels)
        if reason is not None:
            bad.append(f"{sample.path} ({reason})")
        elif stamp is not None:
            _PASSED[stamp] = None
            while len(_PASSED) > PASSED_MEMORY:
                _PASSED.popitem(last=False)
    log.debug("looked at %d %s images in %.2f s", len(samples), what, time.perf_counter() - started)
    if bad:
        shown = "; ".join(bad[:BAD_FILES_SHOWN]) + (f"; and {len(bad) - BAD_FILES_SHOWN} more"
                                                   if len(bad) > BAD_FILES_SHOWN else "")
        raise DataError(f"{len(bad)} of the {what} images cannot be read: {shown}. Remove or replace them; "
                        "nothing was trained")


def _size_of(path: Path) -> tuple[int, int]:
    """(width, height) of a mask file from its header (``.npy``: the shape its header declares)."""
    if path.suffix.lower() == ".npy":
        shape, _ = npy_header(path)
        if len(shape) not in (2, 3):
            raise DataError(f"mask {path} has shape {shape}, not (H, W)")
        return int(shape[1]), int(shape[0])
    with Image.open(path) as img:
        return img.size


def check_masks(samples: Sequence[Sample], masks: object) -> None:
    """Refuses a mask folder that lacks a training image's mask or holds one for another picture.

    Only providers that keep masks in files (those with a ``find(sample)`` method, such as
    :class:`~dapt_core.data.masks.MaskFolder`) are checked; masks computed during training are made at the
    image's own size.

    Raises:
        DataError: the first few images without a mask, with an unreadable mask, or whose mask has another
            aspect ratio than the image (named with both sizes).
    """
    find = getattr(masks, "find", None)
    if find is None:
        return
    missing, unreadable, bad = [], [], []
    for sample in samples:
        path = find(sample)
        if path is None:
            missing.append(str(sample.path))
            continue
        try:
            mask_size = _size_of(Path(path))
            with Image.open(sample.path) as img:
                image_size = img.size
        except DataError as err:
            unreadable.append(str(err))
            continue
        except (UnidentifiedImageError, *_BROKEN) as err:
            unreadable.append(f"{path} ({type(err).__name__})")
            continue
        if not aspect_ratios_match(mask_size, image_size):
            bad.append(f"{path} is {mask_size[0]}x{mask_size[1]} but its image {sample.path.name} is "
                       f"{image_size[0]}x{image_size[1]}")
    if missing:
        raise DataError(f"the mask folder {getattr(masks, 'root', '')} has no mask for {len(missing)} training "
                        f"image(s), e.g. {', '.join(missing[:BAD_FILES_SHOWN])}")
    if unreadable:
        raise DataError(f"{len(unreadable)} mask(s) cannot be read: {'; '.join(unreadable[:BAD_FILES_SHOWN])}")
    if bad:
        raise DataError(f"{len(bad)} mask(s) do not cover the same picture as their image (aspect ratios differ "
                        f"by more than {MASK_ASPECT_TOLERANCE:.0%}): {'; '.join(bad[:BAD_FILES_SHOWN])}")


def check_not_empty(samples: Sequence[Sample], data: str, split: str) -> None:
    """Refuses an empty split before a model loads (evaluating nothing has no meaning)."""
    if not samples:
        raise DataError(f"{data} has no images in its {split} split; choose another --split or data set")
