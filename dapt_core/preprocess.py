"""The one way an image becomes model input, and the one way a view hides part of it.

Training, evaluation, analysis, bulk masks, zero-shot evaluation and the app all go through these functions,
so the model sees the same pixels for the same file wherever it comes from:

- :func:`normalize_pixels`: uint8 RGB pixels -> CLIP-normalised float tensors (any batch shape);
- :func:`to_model_input`: a picture squashed (or a box of it cut) to the square input with Pillow's bicubic
  filter, optionally flipped, then normalised;
- :func:`hide`: keeps the masked part of a normalised batch and sets the rest to 0, which after
  normalisation is the data set's mean colour, as the official DAPT code does;
- :func:`split_views`: DAPT's foreground and background views of a batch.
"""

from __future__ import annotations

from typing import Sequence, Union

import cv2
import numpy as np
import torch
from PIL import Image

Box = tuple[float, float, float, float]  # (left, top, right, bottom) in pixel-edge coordinates
Picture = Union[Image.Image, np.ndarray]


def normalize_pixels(pixels: np.ndarray | torch.Tensor, mean: Sequence[float],
                     std: Sequence[float]) -> torch.Tensor:
    """(..., H, W, 3) uint8 RGB -> (..., 3, H, W) float32, scaled to [0, 1] then normalised per channel."""
    if not isinstance(pixels, torch.Tensor):
        array = np.ascontiguousarray(pixels)
        pixels = torch.from_numpy(array if array.flags.writeable else array.copy())
    x = pixels.movedim(-1, -3).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - mean_t) / std_t


def to_model_input(picture: Picture, size: int, mean: Sequence[float], std: Sequence[float], *,
                   box: Box | None = None, flip: bool = False) -> torch.Tensor:
    """One picture as the model's (3, S, S) input.

    Args:
        picture: RGB, a PIL image or an (H, W, 3) uint8 array.
        size: side ``S`` of the model's square input.
        mean: per-channel mean of the normalisation (RGB, in [0, 1]).
        std: per-channel std of the normalisation.
        box: the region to cut before resizing (a crop); None squashes the whole picture, no crop.
        flip: mirror left-right after resizing.

    Returns:
        float32 (3, S, S), normalised.
    """
    image = picture if isinstance(picture, Image.Image) else Image.fromarray(np.asarray(picture, dtype=np.uint8))
    resized = np.asarray(image.resize((size, size), Image.Resampling.BICUBIC, box=box))
    if flip:
        resized = resized[:, ::-1]
    return normalize_pixels(resized, mean, std)


def mask_to_input(mask: np.ndarray, size: int) -> np.ndarray:
    """An (H, W) mask in [0, 1] at the model's (S, S) resolution; area averaging keeps thin objects visible."""
    return cv2.resize(np.asarray(mask, dtype=np.float32), (size, size), interpolation=cv2.INTER_AREA)


def hide(images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Keeps ``keep`` of normalised images: (B, 3, S, S) x (B, 1, S, S) in [0, 1] -> (B, 3, S, S).

    Hidden pixels become 0, the data set's mean colour after normalisation (not black).
    """
    return images * keep


def split_views(images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DAPT's views of normalised images: (foreground = image x m, background = image x (1 - m))."""
    return hide(images, masks), hide(images, 1.0 - masks)
