"""The background-shift benchmark's tasks as the loaders see them, for either world.

A task of either world is a :class:`~dapt_core.experiments.bias_worlds.DownstreamTask` (the synth world's
:class:`~dapt_core.world.task.SpuriousTask` is converted by :func:`from_spurious`). It is exported to an image folder
with a parallel mask folder, ``root/<split>/<class>/<index>.png`` and ``root_masks/<split>/<class>/<index>.png``
(:func:`dapt_core.world.export.export_arrays`), and every split is read back through the loaders a user's data
takes (`load_imagefolder`, `MaskFolder`). Labels are mapped by class NAME, since `load_imagefolder` numbers
folders in sorted order and a task's classes are not sorted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from dapt_core.data.folders import load_imagefolder
from dapt_core.data.masks import MaskFolder
from dapt_core.data.records import Sample
from dapt_core.experiments.bias_worlds import TEST_SPLITS, DownstreamTask, LabelledScenes
from dapt_core.world.export import TASK_SPLITS, default_mask_root, export_arrays
from dapt_core.world.scenes import Scene
from dapt_core.world.task import SpuriousTask


@dataclass
class TaskData:
    """An exported task as the loaders see it; a split's samples are in the order of its scenes."""

    task: DownstreamTask
    samples: dict[str, list[Sample]]  # split -> samples, labels indexing task.classnames
    masks: dict[str, MaskFolder]  # split -> its ground-truth masks
    scenes: dict[str, LabelledScenes]  # split -> the task's scenes, parallel to samples


def split_scenes(task: DownstreamTask, split: str) -> LabelledScenes:
    """The scenes of one of :data:`~dapt_core.world.export.TASK_SPLITS`."""
    if split == "train":
        return task.train
    if split not in task.tests:
        raise ValueError(f"split: unknown {split!r}; choose from {', '.join(TASK_SPLITS)}")
    return task.tests[split]


def from_spurious(task: SpuriousTask, description: str) -> DownstreamTask:
    """The synth world's spurious task as a downstream task: the same images, masks and backgrounds, labels
    indexing ``task.classnames``, and each class's one home background its training (paired) background."""

    def arrays(scenes: list[Scene]) -> LabelledScenes:
        return LabelledScenes(images=np.stack([s.image for s in scenes]), masks=np.stack([s.mask for s in scenes]),
                              labels=task.labels(scenes), backgrounds=tuple(s.background for s in scenes))

    return DownstreamTask(classnames=tuple(task.classnames), train=arrays(task.train),
                          tests={split: arrays(getattr(task, split)) for split in TEST_SPLITS},
                          description=description, homes={c: (b,) for c, b in task.pairing.items()})


def export_downstream(task: DownstreamTask, root: str | Path) -> None:
    """Write every split under ``root/<split>/<class>/`` and its masks under ``<root>_masks/<split>/<class>/``;
    metadata.jsonl records each scene's class and background."""
    root = Path(root)
    mask_root = default_mask_root(root)
    for split in TASK_SPLITS:
        scenes = split_scenes(task, split)
        records = [{"object": task.classnames[int(label)], "background": bg}
                   for label, bg in zip(scenes.labels, scenes.backgrounds, strict=True)]
        export_arrays(scenes.images, scenes.masks, records, root / split, mask_root / split)


def load_task(task: DownstreamTask, root: str | Path) -> TaskData:
    """Export `task` under `root` (which must be empty) and read every split back with the standard loaders.

    Raises:
        ValueError: a split reads back with another number of images, or a label that differs from the task's.
    """
    root = Path(root)
    export_downstream(task, root)
    mask_root = default_mask_root(root)
    index = {name: i for i, name in enumerate(task.classnames)}
    samples, masks, scenes = {}, {}, {}
    for split in TASK_SPLITS:
        scenes[split] = split_scenes(task, split)
        read = load_imagefolder(root / split, test_fraction=0.0)
        # file stems are scene indices; folder labels are in sorted-name order, the task's are not
        ordered = sorted(read.train, key=lambda s: int(s.path.stem))
        if len(ordered) != len(scenes[split].labels):
            raise ValueError(f"{root / split}: read {len(ordered)} images, the task has {len(scenes[split].labels)}")
        samples[split] = [replace(s, label=index[s.classname]) for s in ordered]
        if [s.label for s in samples[split]] != scenes[split].labels.tolist():
            raise ValueError(f"{root / split}: the class folders read back do not give the task's labels")
        masks[split] = MaskFolder(mask_root / split, root / split)
    return TaskData(task, samples, masks, scenes)
