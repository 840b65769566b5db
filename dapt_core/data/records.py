"""The records every data module shares: samples, splits, the data error and the image listing.

Kept apart so that the folder reader, CoOp's layouts, the masks and the training Dataset can all use them
without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dapt_core.constants import IMAGE_EXTENSIONS
from dapt_core.errors import DaptError

SPLIT_DIRS = ("train", "val", "test")
MASK_RANGE_TOLERANCE = 1e-3  # float masks may overshoot [0, 1] by rounding; more means a wrong scale


class DataError(DaptError):
    """A data set, split, spec or mask that cannot be used; the message names the path and the reason."""


@dataclass(frozen=True)
class Sample:
    path: Path  # image file
    label: int  # class index, 0..n_classes-1
    classname: str  # human-readable class name used in the text prompts


@dataclass
class DatasetSplits:
    name: str  # data set name (CoOp key or folder name)
    classnames: list[str]  # classnames[label]
    train: list[Sample] = field(default_factory=list)
    val: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


def is_image_file(path: Path) -> bool:
    """True for a visible file whose extension is a known image format (case-insensitive)."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[Path]:
    """All image files under ``folder`` (recursively), sorted so every run sees the same order."""
    return sorted(p for p in folder.rglob("*") if is_image_file(p))
