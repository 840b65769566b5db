"""One few-shot training run as the app does it: gather the data, train a fresh copy of the prompts on the
shared frozen backbone, evaluate on held-out images, save the prompt set into the user folder."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dapt_core.app_support.catalog import PromptCatalog
from dapt_core.app_support.uploads import UploadError, check_image_folder
from dapt_core.attention.descriptions import DEFAULT_METHOD
from dapt_core.backbones import Backbone
from dapt_core.checkpoint import save_prompt_set
from dapt_core.data.folders import few_shot, load_imagefolder
from dapt_core.learners import build_learner, list_learners
from dapt_core.data.masks import MaskFolder
from dapt_core.objective import CUES, DaptConfig, scaled_switch_epoch
from dapt_core.train import (
    StepReport, TrainConfig, config_dict, evaluate, model_selection, seed_everything, train_prompts,
)

log = logging.getLogger(__name__)

SOURCES = ("synthetic", "folder")
WEB_BACKBONE = "synth-web"  # the backbone whose "synthetic" source is the web world's task
SYNTH_IMAGE_SIZE = 64  # side of the synthetic scenes (images are resized to the backbone's input anyway)
SYNTH_TEST_SPLITS = ("test_aligned", "test_conflicting", "test_balanced")
MAX_SHOTS = 64
MAX_EPOCHS = 50


@dataclass
class TrainRequest:
    source: str  # "synthetic" (the spurious-background task, exact masks) or "folder" (uploaded images)
    learner: str  # "coop" or "maple"
    cue: str  # DAPT cue: "off", "gradcam", or "mask" (exact masks, or for a folder the ones in ``masks``)
    shots: int  # training images per class
    epochs: int  # passes over the few-shot set
    name: str  # name of the saved prompt set (made file-safe; a taken name gets a -N suffix)
    folder: Path | None = None  # image-folder root (one sub-folder per class) for source "folder"
    seed: int = 1  # seeds the synthetic task, the shot draw and the training
    synth_test_per_class: int = 3  # synthetic scenes per class in each test split
    train: dict = field(default_factory=dict)  # further TrainConfig fields (e.g. batch_size)
    masks: Path | None = None  # for the mask cue on a folder: its mask tree (see app_support.user_masks)
    cam_method: str = DEFAULT_METHOD  # the gradcam cue's attribution map (official: gradcam); other cues: unused

    def validate(self) -> None:
        """Raises ValueError with a message for the user when the request cannot run."""
        if self.source not in SOURCES:
            raise ValueError(f"unknown data source {self.source!r}; choose from {', '.join(SOURCES)}")
        if self.learner not in list_learners():
            raise ValueError(f"unknown learner {self.learner!r}; choose from {', '.join(list_learners())}")
        if self.cue not in CUES:
            raise ValueError(f"unknown DAPT cue {self.cue!r}; choose from {', '.join(CUES)}")
        if self.cue == "mask" and self.source != "synthetic" and self.masks is None:
            raise ValueError("the mask cue on your own images needs their masks: press Make masks, review "
                             "them, then train (or use the gradcam cue)")
        if not 1 <= int(self.shots) <= MAX_SHOTS:
            raise ValueError(f"shots must be between 1 and {MAX_SHOTS}, got {self.shots}")
        if not 1 <= int(self.epochs) <= MAX_EPOCHS:
            raise ValueError(f"epochs must be between 1 and {MAX_EPOCHS}, got {self.epochs}")
        TrainConfig(epochs=int(self.epochs), seed=self.seed, **self.train)  # checks batch size, lr, ... itself
        dapt_config(self.cue, int(self.epochs), self.cam_method)  # and the cue's method
        if self.source == "folder":
            if self.folder is None:
                raise UploadError("no labelled images: upload a zip of class folders or add images per class")
            check_image_folder(self.folder)


@dataclass
class TrainResult:
    key: str  # catalogue key of the saved prompt set
    path: Path  # the saved .safetensors file
    classnames: list[str]  # the class list the prompts were trained on
    metrics: dict  # held-out accuracy (percent) per split; empty when nothing was held out
    note: str  # what was evaluated, or why nothing was
    history: list[dict]  # one record per epoch (see train_prompts)


def requested_epochs(value: object) -> int:
    """The epochs a form's value asks for, within 1..:data:`MAX_EPOCHS`; 1 for a value that the form refuses
    anyway (text, NaN): what a budget set before the form is checked (ZeroGPU's seconds) counts on."""
    try:
        return min(max(int(float(value)), 1), MAX_EPOCHS)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return 1


def dapt_config(cue: str, epochs: int, cam_method: str = DEFAULT_METHOD) -> DaptConfig:
    """DAPT settings for a run of ``epochs``: the official two-phase schedule compressed to the run's length
    (each phase at least one epoch), or both phases at once when there is a single epoch. ``cam_method`` makes
    the gradcam cue's coarse masks; the other cues use none, so theirs is the default.

    Raises:
        ValueError: an unknown cue or method.
    """
    method = cam_method if cue == "gradcam" else DEFAULT_METHOD
    if epochs < 2:
        return DaptConfig(cue=cue, schedule="joint", cam_method=method)
    return DaptConfig(cue=cue, switch_epoch=scaled_switch_epoch(epochs), cam_method=method)


def synthetic_world(backbone: Backbone) -> str:
    """The world of the "synthetic" source: synth-web's own task for a backbone trained on that world (its
    prompt sets are of that world's classes), the flat-shapes spurious task for every other backbone."""
    return "web" if backbone.name == WEB_BACKBONE else "synth"


# what the held-out scenes of each world's synthetic task are (the run's note)
SYNTHETIC_NOTES = {
    "synth": "held-out synthetic scenes, {n} per class: aligned (object on its training background), conflicting (on "
             "another class's background), balanced (any background)",
    "web": "held-out scenes of the rehomed web task, {n} per class: aligned (object on a background usual for it in "
           "this data set), conflicting (on a background usual for it nowhere), balanced (any background)",
}


def _synthetic_data(req: TrainRequest, workdir: Path, world: str):
    """The world's synthetic task (synth: the spurious shapes task; web: the benchmark's rehomed task), written as
    image folders with exact masks and read back as the benchmark reads it."""
    from dapt_core.experiments.background_shift_tasks import load_task
    from dapt_core.experiments.bias_worlds import build_task

    variant = "rehomed" if world == "web" else "home"
    task = build_task(world, req.seed, int(req.shots), req.synth_test_per_class, SYNTH_IMAGE_SIZE, variant=variant)
    data = load_task(task, workdir / world)
    masks = data.masks["train"] if req.cue == "mask" else None
    tests = {split.removeprefix("test_"): data.samples[split] for split in SYNTH_TEST_SPLITS}
    note = SYNTHETIC_NOTES[world].format(n=req.synth_test_per_class)
    return list(task.classnames), data.samples["train"], masks, tests, note


def _folder_data(req: TrainRequest):
    splits = load_imagefolder(req.folder, test_fraction=0.0)
    pool = splits.train + splits.val + splits.test
    chosen = few_shot(pool, int(req.shots), req.seed)
    picked = {s.path for s in chosen}
    rest = [s for s in pool if s.path not in picked]
    left = Counter(s.label for s in rest)
    if all(left[label] >= 1 for label in range(splits.num_classes)):
        tests = {"held_out": rest}
        note = f"{len(rest)} held-out images (those not drawn as shots)"
    else:
        tests = {}
        note = "not evaluated: some class has no image left after the shots (add more images per class)"
    masks = MaskFolder(req.masks, req.folder) if req.cue == "mask" else None
    unmasked = [s for s in chosen if masks is not None and masks.find(s) is None]
    if unmasked:
        raise ValueError(f"{len(unmasked)} training images have no mask (e.g. {unmasked[0].path.name}); "
                         "make the masks again")
    return splits.classnames, chosen, masks, tests, note


def run_training(req: TrainRequest, backbone: Backbone, catalog: PromptCatalog, workdir: Path, *,
                 on_step: Callable[[StepReport], None] | None = None, cancel: threading.Event | None = None,
                 status: Callable[[str], None] = lambda message: None) -> TrainResult:
    """Trains a fresh learner (nobody else's prompts change) and saves it into the catalogue's user folder.

    Raises:
        ValueError: a request that cannot run (see :meth:`TrainRequest.validate`), bad data.
        TrainingCancelled: ``cancel`` was set; nothing is saved.
    """
    req.validate()
    if req.source == "synthetic":
        classnames, train, masks, tests, note = _synthetic_data(req, workdir, synthetic_world(backbone))
    else:
        classnames, train, masks, tests, note = _folder_data(req)
    seed_everything(req.seed)  # the prompts' initial values too: the same request trains the same prompt set
    learner = build_learner(req.learner, backbone, classnames)
    cfg = TrainConfig(epochs=int(req.epochs), seed=req.seed, **req.train)
    dapt = dapt_config(req.cue, cfg.epochs, req.cam_method)
    cue = req.cue if dapt.cam_method == DEFAULT_METHOD else f"{req.cue} from {dapt.cam_method} maps"
    status(f"Training {learner.kind} on {len(train)} images of {len(classnames)} classes (DAPT cue: {cue})…")
    history = train_prompts(learner, train, cfg, dapt, masks=masks, on_step=on_step, cancel=cancel,
                            progress=False)
    metrics = {}
    for split, samples in tests.items():
        status(f"Evaluating on {len(samples)} {split} images…")
        metrics[f"{split}_accuracy"] = evaluate(learner, samples)["accuracy"]
    train_info = {**config_dict(cfg), "shots": int(req.shots), "source": req.source,
                  "n_train": len(train), "evaluation": note, "selected": model_selection(history, cfg.selection)}
    with catalog.write_lock:
        path = catalog.unique_user_path(req.name or f"{req.learner}-{req.cue}")
        save_prompt_set(learner, path, dapt=dapt if dapt.enabled else None, train_config=train_info,
                        metrics=metrics, name=path.stem)
    log.info("training finished: %s %s", path, metrics)
    return TrainResult(f"user/{path.stem}", path, classnames, metrics, note, history)
