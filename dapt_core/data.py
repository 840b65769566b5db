"""Image data for prompt tuning: splits, few-shot sampling, base/novel classes and a mask-aware Dataset.

A data set is a :class:`DatasetSplits` of :class:`Sample` records (path, label, class name). It comes from a
plain image folder (:func:`load_imagefolder`) or from CoOp's layout of the 11 benchmark data sets
(:func:`load_coop`, implemented in :mod:`dapt_core.coop_datasets`). :class:`PromptDataset` loads the images
together with their foreground masks and crops both with the same parameters, so the mask stays
pixel-aligned with the image however it is augmented.
"""

from __future__ import annotations

import os
import logging
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dapt_core.imageio import ImageInputError, load_image

if TYPE_CHECKING:
    from dapt_core.masks import MaskProvider

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLIT_DIRS = ("train", "val", "test")
MASK_RANGE_TOLERANCE = 1e-3  # float masks may overshoot [0, 1] by rounding; more means a wrong scale


class DataError(ValueError):
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


def load_coop(name: str, root: str | Path) -> DatasetSplits:
    """One of the 11 benchmark data sets in CoOp's layout; see :func:`dapt_core.coop_datasets.load_coop`."""
    from dapt_core import coop_datasets

    return coop_datasets.load_coop(name, root)


def list_coop_datasets() -> list[str]:
    """Keys accepted by :func:`load_coop`."""
    from dapt_core import coop_datasets

    return coop_datasets.list_coop_datasets()


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


@dataclass(frozen=True)
class AugmentConfig:
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area share of the random-resized crop (CLIP/CoOp)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range (w/h) of the crop
    crop_attempts: int = 10  # draws before falling back to a centre crop, as torchvision does
    flip_prob: float = 0.5  # chance of a horizontal flip


Box = tuple[float, float, float, float]  # (left, top, right, bottom) in pixel-edge coordinates


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator, cfg: AugmentConfig) -> Box:
    """Draws a crop box the way torchvision's RandomResizedCrop does, from an explicit generator."""
    area = width * height
    log_ratio = (math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]))
    for _ in range(cfg.crop_attempts):
        target_area = area * rng.uniform(*cfg.crop_scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return (left, top, left + w, top + h)
    in_ratio = width / height
    if in_ratio < cfg.crop_ratio[0]:
        w, h = width, round(width / cfg.crop_ratio[0])
    elif in_ratio > cfg.crop_ratio[1]:
        w, h = round(height * cfg.crop_ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return (left, top, left + w, top + h)


def center_crop_box(width: int, height: int) -> Box:
    """The square that "resize the short side, then centre-crop" keeps, in original pixel coordinates."""
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


def load_rgb(path: Path) -> Image.Image:
    """Opens an image as upright RGB through the project's one image reader (EXIF, alpha, 16-bit handled).

    Masks are drawn on the upright image, so the EXIF rotation must be applied here too.
    """
    try:
        return load_image(path)
    except ImageInputError as err:
        raise DataError(f"cannot read image {path}: {err}") from err


class PromptDataset(Dataset):
    """Images with their foreground masks, cropped and flipped jointly.

    Training views are a random-resized crop plus a horizontal flip; evaluation views resize the short side
    to ``image_size`` and centre-crop. Both cut the image (bicubic) and the mask (bilinear, so it stays in
    [0, 1]) from the same box, which keeps them pixel-aligned. The random draws come from
    ``(seed, epoch, index)``, so they are reproducible and identical in every DataLoader worker layout;
    call :meth:`set_epoch` at the start of each epoch to get fresh crops.

    Args:
        samples: the images.
        image_size: side ``S`` of the square output.
        mean: per-channel mean of the normalisation (RGB, in [0, 1]).
        std: per-channel std of the normalisation.
        train: random crop + flip when True, resize + centre crop when False.
        masks: where foreground masks come from; ``None`` gives all-ones masks.
        seed: seed of the augmentation.
        augment: the crop and flip settings.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        masks: MaskProvider | None = None,
        seed: int = 0,
        augment: AugmentConfig = AugmentConfig(),
    ) -> None:
        if image_size <= 0:
            raise DataError(f"image_size must be positive, got {image_size}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise DataError(f"mean and std need 3 channels with std > 0, got mean={mean}, std={std}")
        self.samples = list(samples)
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.train = train
        self.masks = masks
        self.seed = seed
        self.augment = augment
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Selects the augmentation draws of this epoch."""
        self.epoch = epoch

    def _normalise(self, img: Image.Image, flip: bool) -> torch.Tensor:
        arr = np.asarray(img, dtype=np.float32) / 255.0  # (S, S, 3) in [0, 1]
        if flip:
            arr = arr[:, ::-1]
        tensor = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
        return (tensor - self.mean) / self.std

    def _mask(self, index: int, sample: Sample) -> np.ndarray | None:
        if self.masks is None:
            return None
        mask = self.masks.get(index, sample)
        if mask is None:
            raise DataError(f"the mask provider has no mask for image {sample.path} (index {index})")
        mask = np.asarray(mask, dtype=np.float32)
        if mask.ndim != 2 or not np.isfinite(mask).all():
            raise DataError(f"mask for image {sample.path} must be a finite (H, W) array, got {mask.shape}")
        if mask.min() < -MASK_RANGE_TOLERANCE or mask.max() > 1.0 + MASK_RANGE_TOLERANCE:
            # A 0..255 mask clipped to [0, 1] would silently turn into all foreground.
            raise DataError(f"mask for image {sample.path} has values in [{mask.min()}, {mask.max()}], "
                            "expected [0, 1]")
        return np.clip(mask, 0.0, 1.0)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        """One view.

        Returns:
            ``image``: float32 (3, S, S), normalised; ``mask``: float32 (1, S, S) in [0, 1], 1 = foreground;
            ``label``: int64 scalar; ``index``: the index asked for.
        """
        sample = self.samples[index]
        img = load_rgb(sample.path)
        width, height = img.size
        flip = False
        if self.train:
            rng = np.random.default_rng([self.seed % 2**63, self.epoch, index])
            box = random_resized_crop_box(width, height, rng, self.augment)
            flip = bool(rng.random() < self.augment.flip_prob)
        else:
            box = center_crop_box(width, height)
        size = (self.image_size, self.image_size)
        image = self._normalise(img.resize(size, Image.Resampling.BICUBIC, box=box), flip)

        mask_arr = self._mask(index, sample)
        if mask_arr is None:
            mask = torch.ones(1, *size)
        else:
            # A mask at another resolution covers the same scene: scale the box instead of the mask.
            sx, sy = mask_arr.shape[1] / width, mask_arr.shape[0] / height
            mask_box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
            cut = Image.fromarray(mask_arr).resize(size, Image.Resampling.BILINEAR, box=mask_box)
            cut_arr = np.clip(np.asarray(cut, dtype=np.float32), 0.0, 1.0)
            if flip:
                cut_arr = cut_arr[:, ::-1]
            mask = torch.from_numpy(np.ascontiguousarray(cut_arr))[None]
        return {"image": image, "mask": mask, "label": torch.tensor(sample.label, dtype=torch.int64),
                "index": index}

    def full_view(self, index: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """The whole image squashed to S x S (no crop), for masks that must cover every pixel.

        Returns:
            The normalised image, float32 (3, S, S), and the original size ``(H, W)`` to resize a mask
            computed on it back to.
        """
        img = load_rgb(self.samples[index].path)
        width, height = img.size
        resized = img.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        return self._normalise(resized, flip=False), (height, width)


def image_root(splits: DatasetSplits) -> Path:
    """The folder the data set's image paths are relative to (mask folders mirror the tree below it)."""
    return Path(os.path.commonpath([str(s.path) for s in splits.train + splits.val + splits.test]))


def read_class_list(path: str | Path) -> list[str]:
    """Class names from a file: one per line, or comma-separated; at least two."""
    text = Path(path).read_text(encoding="utf-8")
    names = [line.strip() for line in text.replace(",", "\n").splitlines() if line.strip()]
    if len(names) < 2:
        raise DataError(f"class list {path} names {len(names)} class(es); at least two are needed")
    return names
