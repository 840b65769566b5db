"""Loading a ``.pth`` checkpoint without running pickled code: tensors and plain containers only."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dapt_core.errors import DaptError

__all__ = ["UnsafeCheckpointError", "safe_torch_load"]


class UnsafeCheckpointError(DaptError):
    """A checkpoint holds pickled objects other than tensors and plain containers, so it is not loaded."""


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
