"""Writing scenes to disk as an image folder with a parallel mask folder, and reading them back.

Layout for ``export_imagefolder(scenes, "data/train")``::

    data/train/<object>/<index>.png         RGB image; <index> is the scene's position in the list, 5 digits
    data/train/metadata.jsonl               one JSON object per image: path, object, background, colour, caption
    data/train_masks/<object>/<index>.png   single-channel mask, 0 (background) or 255 (object)

A mask has the same relative path under the mask root as its image under the image root, which is
the layout `dapt_core.data.masks.MaskFolder(mask_root, image_root)` reads. `export_task` writes every split
of a `SpuriousTask` as ``root/<split>/<object>/<index>.png`` under one image root and one mask root.
`export_arrays` writes the same layout from plain image and mask arrays, for scenes of another world.

Every file is written to a temporary name in its final folder and renamed into place, so a crash
never leaves a half-written file; metadata.jsonl is written last, so its presence means the export
finished.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Literal
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dapt_core.fileio import write_bytes_atomic
from dapt_core.world.task import SpuriousTask
from dapt_core.world.scenes import Scene

METADATA_NAME = "metadata.jsonl"
MASK_ROOT_SUFFIX = "_masks"
# Zero-padded so that a plain sort of file names follows the scene order.
_INDEX_DIGITS = 5
_MASK_ON = 255


@dataclass(frozen=True)
class ImageFolderExport:
    """Where an export went."""

    image_root: Path  # holds <object>/<index>.png and metadata.jsonl
    mask_root: Path  # holds <object>/<index>.png masks, same relative paths
    image_paths: tuple[Path, ...]  # one per scene, in scene order


def default_mask_root(root: str | os.PathLike) -> Path:
    """The mask root beside an image root: ``data/train`` -> ``data/train_masks``."""
    root = Path(root)
    return root.parent / f"{root.name}{MASK_ROOT_SUFFIX}"


def _encode_png(array: np.ndarray, path: Path) -> bytes:
    ok, buffer = cv2.imencode(".png", array)
    if not ok:
        raise ValueError(f"{path}: PNG encoding failed for an array of shape {array.shape}")
    return buffer.tobytes()


def write_example_images(root: Path, names: tuple[str, str, str], image: np.ndarray, mask: np.ndarray,
                         view_size: int) -> list[Path]:
    """One example scene as three PNGs under ``root``, named ``names``: the (H, W, 3) RGB ``image`` as it is, its
    ``mask`` as 0 / 255, and a nearest-neighbour ``view_size`` copy of the image for viewing; each written to a
    temporary name and renamed into place. Returns the three paths."""
    bgr = np.ascontiguousarray(image[..., ::-1])
    view = cv2.resize(bgr, (view_size, view_size), interpolation=cv2.INTER_NEAREST)
    arrays = (bgr, mask.astype(np.uint8) * _MASK_ON, view)
    return [write_bytes_atomic(root / name, _encode_png(array, root / name)) for name, array in zip(names, arrays)]


def _check_empty(folder: Path, argument: str) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"{argument}: {folder} already exists and is not an empty folder; choose a new one")


def _check_arrays(image: np.ndarray, mask: np.ndarray, names: tuple[str, str]) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{names[0]}: expected (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if mask.dtype != bool or mask.shape != image.shape[:2]:
        raise ValueError(f"{names[1]}: expected {image.shape[:2]} bool, got {mask.shape} {mask.dtype}")


def export_imagefolder(
    scenes: Sequence[Scene],
    root: str | os.PathLike,
    mask_root: str | os.PathLike | None = None,
) -> ImageFolderExport:
    """Write scenes as ``root/<object>/<index>.png`` with masks under `mask_root` (see module doc).

    Args:
        scenes: the scenes to write.
        root: image root; must not exist yet or be an empty folder.
        mask_root: mask root; default `default_mask_root(root)`. Same emptiness rule.

    Returns:
        The roots and the written image paths.

    Raises:
        FileExistsError: a root holds files already (files are never overwritten).
        ValueError: a scene's image or mask has the wrong shape or dtype.
    """
    records = [{"object": s.object, "background": s.background, "colour": s.colour, "caption": s.caption}
               for s in scenes]
    return _export([(s.image, s.mask) for s in scenes], records, root, mask_root,
                   lambda i: (f"scenes[{i}].image", f"scenes[{i}].mask"))


def export_arrays(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    records: Sequence[dict],
    root: str | os.PathLike,
    mask_root: str | os.PathLike | None = None,
) -> ImageFolderExport:
    """Write images as ``root/<record["object"]>/<index>.png`` with masks under `mask_root`, the layout of
    `export_imagefolder`, for scenes that are not `Scene` objects (another world's).

    Args:
        images: (H, W, 3) uint8 RGB images.
        masks: (H, W) bool object masks, one per image.
        records: one per image, at least ``object`` (the class folder); metadata.jsonl gets each after its path.
        root: image root; must not exist yet or be an empty folder.
        mask_root: mask root; default `default_mask_root(root)`. Same emptiness rule.

    Raises:
        FileExistsError: a root holds files already.
        ValueError: the three sequences differ in length, or an image or mask has the wrong shape or dtype.
    """
    if not len(images) == len(masks) == len(records):
        raise ValueError(f"images, masks and records must be as many, got {len(images)}, {len(masks)}, {len(records)}")
    return _export(list(zip(images, masks)), records, root, mask_root, lambda i: (f"images[{i}]", f"masks[{i}]"))


def _export(arrays: Sequence[tuple[np.ndarray, np.ndarray]], records: Sequence[dict], root: str | os.PathLike,
            mask_root: str | os.PathLike | None, names: Callable[[int], tuple[str, str]]) -> ImageFolderExport:
    """Write (image, mask) pairs under their record's ``object`` folder; ``names(i)`` names pair i in errors."""
    root = Path(root)
    mask_root = default_mask_root(root) if mask_root is None else Path(mask_root)
    if root.resolve() == mask_root.resolve():
        raise ValueError(f"mask_root: must differ from root, both are {root}")
    _check_empty(root, "root")
    _check_empty(mask_root, "mask_root")
    for index, (image, mask) in enumerate(arrays):
        _check_arrays(image, mask, names(index))
    root.mkdir(parents=True, exist_ok=True)
    mask_root.mkdir(parents=True, exist_ok=True)
    lines, paths = [], []
    for index, ((image, mask), record) in enumerate(zip(arrays, records)):
        relative = Path(record["object"]) / f"{index:0{_INDEX_DIGITS}d}.png"
        image_path, mask_path = root / relative, mask_root / relative
        write_bytes_atomic(image_path, _encode_png(np.ascontiguousarray(image[..., ::-1]), image_path))
        write_bytes_atomic(mask_path, _encode_png(mask.astype(np.uint8) * _MASK_ON, mask_path))
        lines.append(json.dumps({"path": relative.as_posix(), **record}) + "\n")
        paths.append(image_path)
    write_bytes_atomic(root / METADATA_NAME, "".join(lines).encode("utf-8"))
    return ImageFolderExport(image_root=root, mask_root=mask_root, image_paths=tuple(paths))


TaskSplit = Literal["train", "test_aligned", "test_conflicting", "test_balanced"]
TASK_SPLITS: tuple[TaskSplit, ...] = ("train", "test_aligned", "test_conflicting", "test_balanced")


def export_task(
    task: SpuriousTask, root: str | os.PathLike, mask_root: str | os.PathLike | None = None
) -> dict[TaskSplit, ImageFolderExport]:
    """Write every split of a task: images under ``root/<split>/``, masks under ``mask_root/<split>/``.

    Args:
        task: the task to write.
        root: image root; its split folders must not exist yet or be empty.
        mask_root: mask root; default `default_mask_root(root)`.

    Returns:
        The export of each split, keyed by split name (`TASK_SPLITS`).
    """
    root = Path(root)
    mask_root = default_mask_root(root) if mask_root is None else Path(mask_root)
    for split in TASK_SPLITS:
        _check_empty(root / split, "root")
        _check_empty(mask_root / split, "mask_root")
    return {split: export_imagefolder(getattr(task, split), root / split, mask_root / split) for split in TASK_SPLITS}


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a 0/255 mask PNG written by `export_imagefolder`.

    Returns:
        (H, W) bool mask.

    Raises:
        FileNotFoundError: the file is missing or unreadable as an image.
        ValueError: the file holds values other than 0 and 255.
    """
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise FileNotFoundError(f"{path}: missing or not a readable image")
    if not np.isin(mask, (0, _MASK_ON)).all():
        raise ValueError(f"{path}: a mask must hold only 0 and {_MASK_ON}")
    return mask == _MASK_ON


def load_scenes(root: str | os.PathLike, mask_root: str | os.PathLike | None = None) -> list[Scene]:
    """Read back an export made by `export_imagefolder`, in the order it was written.

    Args:
        root: image root holding metadata.jsonl.
        mask_root: mask root; default `default_mask_root(root)`.

    Returns:
        The scenes, with images (H, W, 3) uint8 RGB and masks (H, W) bool.
    """
    root = Path(root)
    mask_root = default_mask_root(root) if mask_root is None else Path(mask_root)
    metadata = root / METADATA_NAME
    if not metadata.is_file():
        raise FileNotFoundError(f"{metadata}: missing; {root} is not a finished export_imagefolder output")
    scenes = []
    for line_no, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
            relative = record["path"]
            fields = (record["object"], record["background"], record["colour"], record["caption"])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{metadata}:{line_no}: malformed record ({error})") from error
        image = cv2.imread(str(root / relative), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"{root / relative}: missing or not a readable image")
        scenes.append(Scene(np.ascontiguousarray(image[..., ::-1]), read_mask(mask_root / relative), *fields))
    return scenes
