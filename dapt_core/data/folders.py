"""Data sets from disk: plain image folders and CoOp's layouts, few-shot draws, base/novel classes, class lists.

A data set is a :class:`~dapt_core.data.records.DatasetSplits` of
:class:`~dapt_core.data.records.Sample` records (path, label, class name). It comes from a plain image folder
(:func:`load_imagefolder`) or from CoOp's layout of the 11 benchmark data sets
(:func:`dapt_core.data.coop.load_coop`); :func:`parse_data_spec` reads the command line's form of either.
"""

from __future__ import annotations

import logging
import math
import os
import random
import unicodedata
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Literal, Sequence

from dapt_core.constants import IMAGE_EXTENSIONS
from dapt_core.data.coop import list_coop_datasets, load_coop
from dapt_core.data.records import SPLIT_DIRS, DataError, DatasetSplits, Sample, list_images

log = logging.getLogger(__name__)

MAX_CLASS_LIST_BYTES = 1 << 20  # a class-list file; ImageNet's 1000 names take about 15 KB

__all__ = ["few_shot", "image_root", "list_coop_datasets", "load_coop", "load_imagefolder", "parse_data_spec",
           "read_class_list", "subsample_classes"]


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder_to_classname(name: str) -> str:
    return name.replace("_", " ")


def _samples_of_class(class_dir: Path, label: int, classname: str) -> list[Sample]:
    images = list_images(class_dir)
    if not images:
        raise DataError(f"class folder {class_dir} holds no images (extensions: {sorted(IMAGE_EXTENSIONS)})")
    return [Sample(path, label, classname) for path in images]


def _load_given_splits(root: Path) -> DatasetSplits:
    class_dirs = _class_dirs(root / "train")
    if len(class_dirs) < 2:
        raise DataError(f"{root / 'train'} needs at least 2 class folders, found {len(class_dirs)}")
    labels = {d.name: label for label, d in enumerate(class_dirs)}
    classnames = [_folder_to_classname(d.name) for d in class_dirs]
    splits = DatasetSplits(root.name, classnames)
    for split in SPLIT_DIRS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        samples: list[Sample] = []
        for class_dir in _class_dirs(split_dir):
            if class_dir.name not in labels:
                raise DataError(f"class folder {class_dir} has no counterpart in {root / 'train'}")
            label = labels[class_dir.name]
            samples += _samples_of_class(class_dir, label, classnames[label])
        setattr(splits, split, samples)
    return splits


def load_imagefolder(
    root: str | Path, *, val_fraction: float = 0.0, test_fraction: float = 0.2, seed: int = 0
) -> DatasetSplits:
    """Reads a folder with one sub-folder of images per class.

    Class names are the folder names with ``_`` read as a space; labels follow the sorted folder names. If
    ``root/train`` and ``root/test`` exist (``root/val`` optional), they are taken as the splits, each with
    the same kind of class folders. Otherwise every class is split on its own, with a seeded shuffle, into
    ``round(n * test_fraction)`` test, ``round(n * val_fraction)`` val and the rest train images (at least
    one train image per class).

    Args:
        root: the folder.
        val_fraction: share of each class held out for validation, in [0, 1).
        test_fraction: share of each class held out for testing, in [0, 1).
        seed: seed of the per-class shuffle.

    Raises:
        DataError: missing root, fewer than 2 classes, a class folder without images, bad fractions.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    if (root / "train").is_dir() and (root / "test").is_dir():
        return _load_given_splits(root)
    if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise DataError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must each be in [0, 1) "
            "and sum to less than 1"
        )
    class_dirs = _class_dirs(root)
    if len(class_dirs) < 2:
        raise DataError(f"image folder {root} needs at least 2 class sub-folders, found {len(class_dirs)}")
    splits = DatasetSplits(root.name, [_folder_to_classname(d.name) for d in class_dirs])
    for label, class_dir in enumerate(class_dirs):
        samples = _samples_of_class(class_dir, label, splits.classnames[label])
        random.Random(f"{seed}/{class_dir.name}").shuffle(samples)
        n = len(samples)
        n_test = min(round(n * test_fraction), n - 1)
        n_val = min(round(n * val_fraction), n - 1 - n_test)
        splits.test += samples[:n_test]
        splits.val += samples[n_test:n_test + n_val]
        splits.train += samples[n_test + n_val:]
    return splits


def parse_data_spec(spec: str) -> DatasetSplits:
    """Loads the data set a command-line spec names: ``imagefolder:PATH`` or ``coop:NAME:ROOT``.

    Raises:
        DataError: any other form, or whatever the loader raises.
    """
    accepted = "accepted forms: 'imagefolder:PATH' or 'coop:NAME:ROOT'"
    kind, _, rest = spec.partition(":")
    if kind == "imagefolder" and rest:
        return load_imagefolder(rest)
    if kind == "coop":
        name, _, root = rest.partition(":")
        if name and root:
            return load_coop(name, root)
    raise DataError(f"cannot read data spec {spec!r}; {accepted}")


def few_shot(samples: Sequence[Sample], shots: int | None, seed: int) -> list[Sample]:
    """Draws ``shots`` samples per class without replacement.

    The draw depends only on the set of samples, the shot count and the seed, never on the input order.
    A class with fewer than ``shots`` samples keeps all of them (with a logged warning).

    Args:
        samples: the pool, usually ``splits.train``.
        shots: samples per class; ``None`` or ``<= 0`` keeps everything.
        seed: seed of the draw.

    Returns:
        The chosen samples, sorted by label then path.
    """
    if shots is None or shots <= 0:
        return list(samples)
    by_label: dict[int, list[Sample]] = defaultdict(list)
    for sample in sorted(samples, key=lambda s: (s.label, str(s.path))):
        by_label[sample.label].append(sample)
    rng = random.Random(seed)
    chosen: list[Sample] = []
    short = []
    for label in sorted(by_label):
        pool = by_label[label]
        if len(pool) < shots:
            short.append(f"{pool[0].classname!r} ({len(pool)})")
            chosen += pool
        else:
            chosen += sorted(rng.sample(pool, shots), key=lambda s: str(s.path))
    if short:
        log.warning("%d classes have fewer than %d shots, keeping all their images: %s",
                    len(short), shots, ", ".join(short))
    return chosen


def subsample_classes(splits: DatasetSplits, which: Literal["all", "base", "novel"]) -> DatasetSplits:
    """Keeps the base classes (first ``ceil(n/2)`` labels) or the novel ones (the rest), relabelled from 0.

    This is the base-to-novel protocol of CoOp/CoCoOp/MaPLe; ``"all"`` returns the splits unchanged.
    """
    if which == "all":
        return splits
    n = splits.num_classes
    n_base = math.ceil(n / 2)
    if which == "base":
        kept = range(0, n_base)
    elif which == "novel":
        kept = range(n_base, n)
    else:
        raise DataError(f"subsample_classes: which={which!r}; expected 'all', 'base' or 'novel'")
    offset = kept.start

    def keep(samples: list[Sample]) -> list[Sample]:
        return [replace(s, label=s.label - offset) for s in samples if s.label in kept]

    return DatasetSplits(
        splits.name, splits.classnames[kept.start:kept.stop],
        keep(splits.train), keep(splits.val), keep(splits.test),
    )


def image_root(splits: DatasetSplits) -> Path:
    """The folder the data set's image paths are relative to (mask folders mirror the tree below it)."""
    return Path(os.path.commonpath([str(s.path) for s in splits.train + splits.val + splits.test]))


def read_class_list(path: str | Path) -> list[str]:
    """Class names from a UTF-8 text file: one per line, or comma-separated; at least two, no repeats.

    Raises:
        DataError: no such file, a file over :data:`MAX_CLASS_LIST_BYTES`, not UTF-8 text (a binary file),
            control characters in a name, a repeated name, or fewer than two names.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"class list {path} {'is a folder' if path.is_dir() else 'does not exist'}")
    if path.stat().st_size > MAX_CLASS_LIST_BYTES:
        raise DataError(f"class list {path} is larger than {MAX_CLASS_LIST_BYTES // 1024} KB; it should hold one "
                        "class name a line")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"class list {path} is not UTF-8 text (byte {err.start}); it should hold one class name "
                        "a line") from err
    names = [line.strip() for line in text.replace(",", "\n").splitlines() if line.strip()]
    odd = next((n for n in names if any(unicodedata.category(c) == "Cc" for c in n)), None)
    if odd is not None:
        raise DataError(f"class list {path}: the name {odd!r} holds control characters")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"class list {path} names {', '.join(map(repr, repeated[:5]))} more than once")
    if len(names) < 2:
        raise DataError(f"class list {path} names {len(names)} class(es); at least two are needed")
    return names
