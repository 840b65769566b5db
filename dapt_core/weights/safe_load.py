"""Loading a ``.pth`` checkpoint without running pickled code, and telling a weight file from anything else.

:func:`safe_torch_load` reads tensors and plain containers only. :func:`check_weight_file` looks at a file's
first bytes (and a safetensors file's header) before any loader sees it, so a text file, a zip of images or a
pickle renamed ``.safetensors`` is refused with a message instead of a loader's traceback;
:func:`weight_load_errors` turns what a loader raises on a file that passed that look into the same errors.
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dapt_core.errors import DaptError

__all__ = ["UnsafeCheckpointError", "WeightFileError", "check_weight_file", "safe_torch_load", "weight_load_errors"]

SAFETENSORS_HEADER_MAX = 100 * 2**20  # safetensors' own limit on its JSON header
PICKLE_PROTO = 0x80  # first byte of a pickle of protocol 2 or later: torch's legacy (pre-1.6) format
ZIP_MAGIC = b"PK\x03\x04"  # a zip file's first local header
TORCH_ZIP_RECORD = "data.pkl"  # the pickle inside a torch.save zip (``<archive>/data.pkl``)
KINDS = ("safetensors", "torch-zip", "torch-legacy")  # what check_weight_file tells apart


class UnsafeCheckpointError(DaptError):
    """A checkpoint holds pickled objects other than tensors and plain containers, so it is not loaded."""


class WeightFileError(DaptError):
    """A file given as weights that is no weight file, a damaged one, or the weights of another model."""


def _safetensors_header(file: Path) -> dict | None:
    """The JSON header of a safetensors file, or None when the file does not start like one."""
    with file.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return None
        (size,) = struct.unpack("<Q", head)
        if not 2 <= size <= min(SAFETENSORS_HEADER_MAX, file.stat().st_size - 8):
            return None
        try:
            header = json.loads(f.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
    return header if isinstance(header, dict) else None


def check_weight_file(path: str | Path, what: str = "weights file") -> str:
    """Says what kind of weight file ``path`` is, reading only its first bytes, without loading it.

    Args:
        path: the file.
        what: how messages name it (e.g. ``"--weights file"``).

    Returns:
        One of :data:`KINDS`: ``safetensors`` (its JSON header read and checked), ``torch-zip`` (a
        ``torch.save`` zip with its ``data.pkl``) or ``torch-legacy`` (a pickle, torch's format before 1.6).

    Raises:
        FileNotFoundError: no such file.
        WeightFileError: anything else, named with what it looks like; a ``.safetensors`` file that is not one
            (e.g. a pickle renamed) is refused although a torch loader might read it.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{what} does not exist: {file}")
    header = _safetensors_header(file)
    if file.suffix == ".safetensors" or header is not None:
        if header is None:
            raise WeightFileError(f"{what} {file} is not a safetensors file (its header is missing or "
                                  "damaged); it was not loaded")
        return "safetensors"
    if zipfile.is_zipfile(file):
        try:
            with zipfile.ZipFile(file) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as err:
            raise WeightFileError(f"{what} {file} is a damaged zip file ({err})") from err
        if not any(n == TORCH_ZIP_RECORD or n.endswith("/" + TORCH_ZIP_RECORD) for n in names):
            raise WeightFileError(f"{what} {file} is a zip file but not a torch checkpoint (no "
                                  f"{TORCH_ZIP_RECORD} inside)")
        return "torch-zip"
    with file.open("rb") as f:
        first = f.read(4)
    if first[:1] and first[0] == PICKLE_PROTO:
        return "torch-legacy"
    if first == ZIP_MAGIC:
        raise WeightFileError(f"{what} {file} starts like a zip file (a torch checkpoint?) but is truncated or "
                              "damaged; it was not loaded")
    raise WeightFileError(f"{what} {file} is neither a safetensors file nor a torch checkpoint; it was not "
                          "loaded")


@contextmanager
def weight_load_errors(path: str | Path, what: str = "weights file") -> Iterator[None]:
    """Turns what torch, safetensors or open_clip raise while loading ``path`` into :class:`WeightFileError`
    (damaged, or weights of another model) or :class:`UnsafeCheckpointError` (pickled objects)."""
    name = str(path)
    try:
        yield
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(f"{what} {name} holds objects other than tensors and plain containers and "
                                    f"was not loaded (unpickling it could run code); re-save it as a plain state "
                                    f"dict of tensors. Detail: {_unpickler_detail(err)}") from err
    except RuntimeError as err:
        if "state_dict" in str(err):
            raise WeightFileError(f"{what} {name} does not fit this model ({_key_summary(str(err))}); it holds "
                                  "the weights of another model") from err
        raise WeightFileError(f"{what} {name} cannot be read: {_first_line(err)}") from err
    except StopIteration as err:  # open_clip takes the first key of the state dict
        raise WeightFileError(f"{what} {name} holds no tensors") from err
    except (EOFError, KeyError, IndexError, ValueError, TypeError, AttributeError, zipfile.BadZipFile) as err:
        if isinstance(err, DaptError):
            raise
        raise WeightFileError(f"{what} {name} cannot be read as weights ({type(err).__name__}: "
                              f"{_first_line(err)})") from err


def _unpickler_detail(err: BaseException) -> str:
    """The line of torch's weights-only message that names what was refused (its first lines are advice)."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _key_summary(message: str) -> str:
    """How many keys a ``load_state_dict`` message lists as missing, unexpected and of the wrong size."""
    counts = []
    for label in ("Missing key(s)", "Unexpected key(s)"):
        if label in message:
            line = message.split(label, 1)[1].split("\n", 1)[0]
            counts.append(f"{line.count(chr(34)) // 2} {label.split()[0].lower()}")
    if "size mismatch for" in message:
        counts.append(f"{message.count('size mismatch for')} of another shape")
    return f"tensors: {', '.join(counts)}" if counts else "tensors that do not match"


def safe_torch_load(path: str | Path) -> dict[str, Any]:
    """Loads a ``.pth`` state dict with ``weights_only=True``: tensors and plain containers only.

    Args:
        path: a file written by ``torch.save`` holding a dict (e.g. a SAM checkpoint).

    Returns:
        The loaded dict, tensors on the CPU.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the file pickles other objects (code could run on load), so it is refused.
        WeightFileError: the file is no torch checkpoint, is damaged, or holds something other than a dict.
    """
    import torch  # deferred: resolving and listing weights should not pay for importing torch

    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint file does not exist: {file}")
    if check_weight_file(file, "checkpoint") == "safetensors":
        raise WeightFileError(f"checkpoint {file} is a safetensors file, not a torch checkpoint")
    with weight_load_errors(file, "checkpoint"):
        loaded = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(loaded, Mapping):
        raise WeightFileError(f"checkpoint {file} holds a {type(loaded).__name__}, expected a dict of tensors")
    return dict(loaded)
