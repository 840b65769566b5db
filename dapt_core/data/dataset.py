"""The training and evaluation Dataset: images with their foreground masks, cropped and flipped jointly."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dapt_core.data.masks import aspect_ratios_match
from dapt_core.data.records import MASK_RANGE_TOLERANCE, DataError, Sample
from dapt_core.imageio import ImageInputError, load_image
from dapt_core.preprocess import Box, to_model_input

if TYPE_CHECKING:
    from dapt_core.data.masks import MaskProvider


@dataclass(frozen=True)
class AugmentConfig:
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area share of the random-resized crop (CLIP/CoOp)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range (w/h) of the crop
    crop_attempts: int = 10  # draws before falling back to a centre crop, as torchvision does
    flip_prob: float = 0.5  # chance of a horizontal flip


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
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.train = train
        self.masks = masks
        self.seed = seed
        self.augment = augment
        self.epoch = 0
        self.use_masks = True  # False: all-ones masks, the provider unread (an epoch whose steps use no view)

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Selects the augmentation draws of this epoch."""
        self.epoch = epoch

    def _mask(self, index: int, sample: Sample) -> np.ndarray | None:
        if self.masks is None or not self.use_masks:
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
        image = to_model_input(img, self.image_size, self.mean, self.std, box=box, flip=flip)

        mask_arr = self._mask(index, sample)
        if mask_arr is None:
            mask = torch.ones(1, *size)
        else:
            if not aspect_ratios_match((mask_arr.shape[1], mask_arr.shape[0]), (width, height)):
                raise DataError(f"mask for image {sample.path} is {mask_arr.shape[1]}x{mask_arr.shape[0]} but the "
                                f"image is {width}x{height}; a mask must cover the same picture")
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
        return to_model_input(img, self.image_size, self.mean, self.std), (height, width)
