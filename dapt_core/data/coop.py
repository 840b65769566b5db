"""The 11 few-shot benchmark data sets, read from CoOp's directory layout.

CoOp (Zhou et al.) fixed a layout and a train/val/test split for each data set (its ``DATASETS.md``):
``ROOT/<dataset_dir>/<image_dir>/...`` plus a ``split_zhou_<Name>.json`` of ``[impath, label, classname]``
entries whose paths are relative to the image folder. FGVC-Aircraft keeps its own text files and ImageNet
its class folders; both have readers of their own here. Class names come from the split files, which CoOp
already cleaned (underscores replaced and so on).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dapt_core.data.records import DataError, DatasetSplits, list_images, Sample, SPLIT_DIRS

LAYOUT_HINT = "the data set must be in CoOp's layout (see CoOp's DATASETS.md)"


@dataclass(frozen=True)
class CoopLayout:
    dataset_dir: str  # folder under ROOT
    image_dir: str  # folder of images under dataset_dir; "" means the dataset_dir itself
    split_file: str | None  # split_zhou_*.json under dataset_dir; None where a reader of its own is used
    reader: str = "split_zhou"  # which reader builds the splits


_REGISTRY: dict[str, CoopLayout] = {
    "caltech101": CoopLayout("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "oxford_pets": CoopLayout("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "stanford_cars": CoopLayout("stanford_cars", "", "split_zhou_StanfordCars.json"),
    "oxford_flowers": CoopLayout("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "food101": CoopLayout("food-101", "images", "split_zhou_Food101.json"),
    "sun397": CoopLayout("sun397", "SUN397", "split_zhou_SUN397.json"),
    "dtd": CoopLayout("dtd/dtd", "images", "split_zhou_DescribableTextures.json"),
    "eurosat": CoopLayout("eurosat", "2750", "split_zhou_EuroSAT.json"),
    "ucf101": CoopLayout("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
    "fgvc_aircraft": CoopLayout("fgvc_aircraft", "images", None, reader="fgvc_aircraft"),
    "imagenet": CoopLayout("imagenet", "images", None, reader="imagenet"),
}


def list_coop_datasets() -> list[str]:
    """Keys of the data sets :func:`load_coop` reads, in CoOp's usual order."""
    return list(_REGISTRY)


def get_coop_layout(name: str) -> CoopLayout:
    """The layout of a data set; an unknown key raises with the list of known ones."""
    if name not in _REGISTRY:
        raise DataError(f"unknown CoOp data set {name!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{what} {path} not found; {LAYOUT_HINT}")
    return path


def _check_first_image(splits: DatasetSplits, image_dir: Path) -> None:
    # One stat catches a wrong root or image_dir without touching every file of a large data set.
    for split in SPLIT_DIRS:
        samples = getattr(splits, split)
        if samples and not samples[0].path.is_file():
            raise DataError(f"image {samples[0].path} listed in the {split} split is missing under "
                            f"{image_dir}; {LAYOUT_HINT}")


def _read_split_zhou(name: str, dataset_dir: Path, image_dir: Path, layout: CoopLayout) -> DatasetSplits:
    split_path = _require(dataset_dir / layout.split_file, "split file")
    try:
        content = json.loads(split_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read split file {split_path}: {err}") from err
    names: dict[int, str] = {}
    splits = DatasetSplits(name, [])
    for split in SPLIT_DIRS:
        entries = content.get(split)
        if not isinstance(entries, list):
            raise DataError(f"split file {split_path} has no list under {split!r}")
        samples: list[Sample] = []
        for entry in entries:
            if not (isinstance(entry, list) and len(entry) == 3):
                raise DataError(f"split file {split_path}: {split} entry {entry!r} "
                                "is not [impath, label, classname]")
            impath, label, classname = entry[0], int(entry[1]), str(entry[2])
            if names.setdefault(label, classname) != classname:
                raise DataError(f"split file {split_path}: label {label} is both "
                                f"{names[label]!r} and {classname!r}")
            samples.append(Sample(image_dir / impath, label, classname))
        setattr(splits, split, samples)
    if sorted(names) != list(range(len(names))):
        raise DataError(f"split file {split_path}: labels are not 0..{len(names) - 1} without gaps")
    splits.classnames = [names[label] for label in range(len(names))]
    return splits


def _read_fgvc_aircraft(name: str, dataset_dir: Path, image_dir: Path, layout: CoopLayout) -> DatasetSplits:
    variants_path = _require(dataset_dir / "variants.txt", "class list")
    classnames = [line.strip() for line in variants_path.read_text().splitlines() if line.strip()]
    labels = {classname: label for label, classname in enumerate(classnames)}
    splits = DatasetSplits(name, classnames)
    for split in SPLIT_DIRS:
        list_path = _require(dataset_dir / f"images_variant_{split}.txt", "split file")
        samples: list[Sample] = []
        for lineno, line in enumerate(list_path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            imgid, _, variant = line.strip().partition(" ")
            if variant not in labels:
                raise DataError(f"{list_path}:{lineno}: variant {variant!r} is not in {variants_path}")
            samples.append(Sample(image_dir / f"{imgid}.jpg", labels[variant], variant))
        setattr(splits, split, samples)
    return splits


def _read_imagenet(name: str, dataset_dir: Path, image_dir: Path, layout: CoopLayout) -> DatasetSplits:
    names_path = _require(dataset_dir / "classnames.txt", "class list")
    wnid_to_name: dict[str, str] = {}
    for line in names_path.read_text().splitlines():
        wnid, _, classname = line.strip().partition(" ")
        if wnid:
            wnid_to_name[wnid] = classname.strip()
    # CoOp labels ImageNet classes by the sorted folder (wnid) names.
    wnids = sorted(wnid_to_name)
    splits = DatasetSplits(name, [wnid_to_name[w] for w in wnids])
    for split, folder in (("train", "train"), ("test", "val")):
        split_dir = _require(image_dir / folder, "image folder")
        samples: list[Sample] = []
        for label, wnid in enumerate(wnids):
            class_dir = _require(split_dir / wnid, "class folder")
            samples += [Sample(path, label, wnid_to_name[wnid]) for path in list_images(class_dir)]
        setattr(splits, split, samples)
    return splits


_READERS: dict[str, Callable[[str, Path, Path, CoopLayout], DatasetSplits]] = {
    "split_zhou": _read_split_zhou,
    "fgvc_aircraft": _read_fgvc_aircraft,
    "imagenet": _read_imagenet,
}


def load_coop(name: str, root: str | Path) -> DatasetSplits:
    """Reads one of the benchmark data sets from CoOp's layout under ``root``.

    Args:
        name: a key of :func:`list_coop_datasets` (``oxford_pets``, ``imagenet``, ...).
        root: the folder that holds every data set's folder (CoOp's ``DATA`` directory).

    Raises:
        DataError: unknown name, or a missing split file, class list or image folder (the message names the
            expected path).
    """
    layout = get_coop_layout(name)
    dataset_dir = _require(Path(root) / layout.dataset_dir, "data set folder")
    image_dir = _require(dataset_dir / layout.image_dir, "image folder") if layout.image_dir else dataset_dir
    splits = _READERS[layout.reader](name, dataset_dir, image_dir, layout)
    if splits.num_classes < 2:
        raise DataError(f"{dataset_dir} holds {splits.num_classes} classes; need at least 2")
    _check_first_image(splits, image_dir)
    return splits
