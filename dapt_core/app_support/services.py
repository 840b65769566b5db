"""The work behind the app's widgets, built once around the shared backbone and serving every visitor.

:class:`AppServices` owns the prompt catalogue, the examples, a private temporary folder, the segmenter menu,
the comparer, the visitors' masks and the training service. Its methods are the app's handlers: they take a
form's values as the UI sends them (an upload as Gradio's file value, a visitor's image folder as a string or
None) and return plain values; the UI (``app.py``) adds the few that need its own types and turns errors into
its messages. Building one first removes what killed apps left behind
and then holds this app's claim on the user prompt folder (see :mod:`leftovers`).
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any, Callable, Iterator

from dapt_core.app_support.catalog import PromptCatalog, install_note
from dapt_core.app_support.compare import CompareLimits, CompareOutputs, Comparer
from dapt_core.app_support.leftovers import claim_user_folder, release, remove_dead_temp_folders
from dapt_core.app_support.segmenters import SegmenterMenu
from dapt_core.app_support.startup import Examples, TempFiles
from dapt_core.app_support.trainer import TrainingService, TrainProgress
from dapt_core.app_support.uploads import NO_IMAGES_YET, upload_name, upload_path
from dapt_core.app_support.user_masks import UserMasks
from dapt_core.backbones import Backbone


class AppServices:
    """Everything one app serves; each part guards its own state, so one instance serves every visitor.

    Args:
        limits: what one comparison may ask for.
        max_waiting: training jobs that may wait in line.
        redraw_s: a training watcher redraws at most once per this many seconds.
    """

    def __init__(self, backbone: Backbone, catalog: PromptCatalog, examples: Examples, *, limits: CompareLimits,
                 max_waiting: int, redraw_s: float) -> None:
        self.leftovers = remove_dead_temp_folders()  # what killed apps left, removed on start
        lock, partials = claim_user_folder(catalog.user_dir)
        self.leftovers += partials
        weakref.finalize(self, release, lock)
        self.backbone, self.catalog, self.examples = backbone, catalog, examples
        self.files = TempFiles()
        self.segmenters = SegmenterMenu(exact_masks=any(e.mask for e in examples.items))
        self.comparer = Comparer(catalog, self.segmenters, examples, self.files, limits)
        self.user_masks = UserMasks(backbone, self.segmenters)
        self.trainer = TrainingService(backbone, catalog, self.files, max_waiting=max_waiting, redraw_s=redraw_s,
                                       masks=self.user_masks)

    # Handlers with plain values in and out; their docstrings are the app's API descriptions
    def suggest_segmenter(self, image: Any, segmenter: str) -> str:
        return self.comparer.suggest_segmenter(image, segmenter)

    def segmenter_note(self, image: Any, segmenter: str) -> str:
        return self.comparer.segmenter_note(image, segmenter)

    def suggest_target(self, image: Any, target: str) -> str:
        """The class to explain: a picked example's true class (its numbers are that class's maps), else as typed."""
        return self.examples.target(upload_path(image), target or "")

    def example_note(self, image: Any) -> str:
        """The picked example's own numbers beside the benchmark's (markdown); "" for any other picture."""
        return self.examples.note(upload_path(image))

    def compare(self, image: Any, set_keys: list[str] | None, classes: str, segmenter: str, cam_method: str,
                target: str) -> CompareOutputs:
        """Runs every chosen prompt set on the image; returns the split, overlays, table, chart, figure, JSON."""
        return self.comparer.run(image, set_keys, classes, segmenter, cam_method, target)

    def add_images(self, files: list | None, classname: str, folder: str | None) -> tuple[str, str]:
        """Adds uploaded images under a class name to this visitor's image folder (kept in gr.State)."""
        paths = [p for p in map(upload_path, files or []) if p is not None]
        root, summary = self.trainer.add_images(paths, classname, _folder(folder))
        return str(root), summary

    def clear_images(self) -> tuple[None, str]:
        return None, NO_IMAGES_YET

    def prompt_sets(self) -> list[dict]:
        """The prompt sets that fit the loaded backbone, with their metadata."""
        return self.catalog.view().summaries

    def upload_prompt_set(self, upload: Any) -> str:
        """Checks an uploaded .safetensors prompt set against the backbone and adds it to the user folder."""
        path = upload_path(upload)
        if path is None:
            raise ValueError("Choose a .safetensors prompt set to upload.")
        return install_note(self.catalog.install(path, upload_name(upload), staging=self.files.root))

    def download_prompt_set(self, key: str | None) -> str:
        """A copy of a prompt set's file, to download."""
        return str(self.catalog.export(key, self.files))

    # The work of the handlers that take the UI's own values: progress, and the visitor's request, whose
    # session owns the training jobs it queues (what that visitor's cancel stops)
    def masks_for_form(self, source: str, zip_file: Any, folder: str | None, segmenter: str,
                       progress: Callable[[int, int], None]) -> tuple[list, str]:
        """The masks of the tuning form's images for the mask cue, as a gallery to review and a summary;
        ``progress(done, total)`` is called as they are made."""
        made = self.user_masks.make_for_form(source, upload_path(zip_file), _folder(folder), segmenter,
                                             self.files.new_dir(), progress)
        return made.gallery(), made.summary

    def train_from_form(self, request: Any, source: str, zip_file: Any, learner: str, cue: str, shots: float,
                        epochs: float, name: str, seed: float, folder: str | None,
                        mask_segmenter: str | None = None, cue_method: str | None = None) -> Iterator[TrainProgress]:
        """Queues the visitor's training job and yields its place in line, progress, losses and the saved set.
        A full user folder is said before the training, not after it."""
        self.catalog.check_room()
        job = self.trainer.submit(session_owner(request), source, upload_path(zip_file), learner, cue, shots,
                                  epochs, name, seed, _folder(folder), mask_segmenter, cue_method)
        yield from self.trainer.watch(job)

    def cancel_training(self, request: Any) -> str:
        """Cancels the visitor's training jobs, waiting or running; says whether there was any."""
        return self.trainer.cancel(session_owner(request))


def session_owner(request: Any) -> str:
    """Whose training jobs these are: the visitor's session (``request.session_hash``), else "anonymous"."""
    return getattr(request, "session_hash", None) or "anonymous"


def _folder(value: str | None) -> Path | None:
    return Path(value) if value else None
