"""Start-up choices of the app: which backbone to serve, the example images, a private temp folder."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dapt_core import paths
from dapt_core.app_support.leftovers import OWNER_FILE, TEMP_PREFIX, hold_owner_lock, release
from dapt_core.backbones import Backbone, BackboneError, get_backbone_spec, load_backbone
from dapt_core.constants import MASK_THRESHOLD
from dapt_core.learners.base import clean_classnames
from dapt_core.data.masks import read_mask_file
from dapt_core.weights import WeightsNotFoundError

log = logging.getLogger(__name__)

REAL_BACKBONE = "ViT-B-16"
# the bundled backbones the app falls back to, in order, when the real weights are missing: synth-web has the
# context bias that DAPT is meant to remove (its maps move), synth-mini ignores backgrounds
FALLBACK_BACKBONES = ("synth-web", "synth-mini")
REAL_WEIGHTS = "clip-vit-b-16-openai"
FETCH_COMMAND = f"python -m dapt_core weights fetch {REAL_WEIGHTS}"
BUNDLED_PROMPT_DIR = paths.CHECKPOINT_DIR / "prompts"
USER_PROMPT_DIR = Path(os.environ.get("DAPT_USER_PROMPTS", paths.CHECKPOINT_DIR / "user"))
EXAMPLE_DIR = paths.ASSETS_DIR / "examples"  # scenes of the synthetic world, for the backbones trained on it
WEB_EXAMPLE_DIR = paths.ASSETS_DIR / "examples_web"  # conflicting scenes of the rehomed web task, for synth-web
PHOTO_DIR = paths.ASSETS_DIR / "photos"  # public-domain photographs, for backbones trained on photographs
# each backbone of a synthetic world gets its world's scenes; every other backbone the photographs
EXAMPLE_DIRS = {"synth-mini": EXAMPLE_DIR, "tiny-vit": EXAMPLE_DIR, "synth-web": WEB_EXAMPLE_DIR}
# what the banner says a bundled backbone is
BUNDLED_DESCRIPTIONS = {
    "synth-web": ("the bundled **synth-web** backbone, a small CLIP trained on a web-like synthetic world where "
                  "each object mostly appears on its two home backgrounds, so it has measured context bias "
                  "(checkpoints/synth-web.md); its prompt sets and examples come from a downstream task whose usual "
                  "backgrounds are other objects' web homes"),
    "synth-mini": ("the bundled **synth-mini** backbone, a small CLIP trained on this project's synthetic shapes "
                   "world with backgrounds independent of objects: it reads the object and ignores the background, "
                   "so prompt sets with and without DAPT draw nearly the same maps"),
}
# Not constants.IMAGE_EXTENSIONS: examples are shown as thumbnails, so only formats every browser draws
EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
EXAMPLE_MANIFEST = "examples.json"
MASK_SUFFIX = "_mask"  # mask files beside example images are not examples themselves
LEARNER_CACHE_SIZE = 8  # prompt sets kept built in memory; each is small next to the backbone
# what the user folder (uploads and the app's training runs) may hold; a set beyond either is refused, none is
# deleted to make room. A ViT-B/16 MaPLe set is ~14 MB, a CoOp set ~40 KB.
USER_PROMPT_MAX_SETS = 200
USER_PROMPT_MAX_BYTES = 2 * 2**30
TEMP_MAX_AGE_S = 6 * 3600.0  # visitors' temporary files (figures, uploads, downloads) are kept this long


@dataclass
class BackboneChoice:
    backbone: Backbone | None  # the shared frozen model, None when nothing could be loaded
    banner: str | None  # markdown shown above the tabs (fallback or test backbone), None for the real one
    error: str | None  # markdown explaining what to do when no backbone could be loaded


def choose_backbone(forced: str | None = None, *, device: str | None = None, download: bool = True) -> BackboneChoice:
    """Loads the backbone the app serves: ``forced`` if given, else ViT-B/16 (OpenAI), else the first of
    :data:`FALLBACK_BACKBONES` whose weights are here (synth-web, then synth-mini).

    Args:
        forced: a registry name that must be used (``--backbone`` / ``DAPT_BACKBONE``).
        device: torch device; the GPU when there is one by default.
        download: allow downloading the real weights when they are not on this machine and it is online.
    """
    if forced:
        try:
            backbone = load_backbone(forced, device=device, download=download)
        except (BackboneError, WeightsNotFoundError) as err:
            log.exception("cannot load the requested backbone %s", forced)
            return BackboneChoice(None, None, f"The requested backbone `{forced}` could not be loaded: {err}")
        banner = None
        if get_backbone_spec(forced).test_only:
            banner = (f"Backbone `{forced}` has **random weights**: it is meant for tests and timing, its "
                      "predictions mean nothing.")
        elif forced in BUNDLED_DESCRIPTIONS:
            banner = f"Running on {BUNDLED_DESCRIPTIONS[forced]}."
        return BackboneChoice(backbone, banner, None)
    try:
        return BackboneChoice(load_backbone(REAL_BACKBONE, device=device, download=download), None, None)
    except WeightsNotFoundError as err:
        log.warning("ViT-B/16 weights unavailable, falling back to the bundled backbones: %s", err)
    missing = []
    for name in FALLBACK_BACKBONES:
        try:
            backbone = load_backbone(name, device=device, download=False)
        except WeightsNotFoundError as err:
            log.error("the bundled backbone %s cannot be loaded: %s", name, err)
            missing.append(str(err))
            continue
        return BackboneChoice(backbone, (
            f"Running on {BUNDLED_DESCRIPTIONS[name]}, because the CLIP ViT-B/16 weights are not available "
            f"offline. For real photos, fetch them with `{FETCH_COMMAND}` and restart the app."), None)
    return BackboneChoice(None, None, (
        "No backbone could be loaded. The CLIP ViT-B/16 weights are not on this machine and could not be "
        f"downloaded, and the bundled {' and '.join(FALLBACK_BACKBONES)} weights are missing too "
        f"({'; '.join(missing)}).\n\nFetch the real weights on a machine that is online with `{FETCH_COMMAND}` "
        "(then restart the app), or start with `--backbone tiny-vit` to try the interface with random weights."))


def describe_backbone(backbone: Backbone) -> str:
    """A markdown list of what the backbone says about itself (name, weights, device, ...), for visitors: the
    weights file by its name, not by its path on the server."""
    facts = backbone.describe()
    if facts.get("weights"):
        facts["weights"] = Path(facts["weights"]).name
    return "\n".join(f"- **{k}**: {v}" for k, v in facts.items())


@dataclass(frozen=True)
class Example:
    image: Path  # the picture offered (the manifest's viewing copy when it has one)
    label: str  # caption under the thumbnail
    mask: Path | None  # its exact object mask (255 = object), when known
    note: str | None = None  # markdown shown when it is picked: its own numbers beside the benchmark's
    true_class: str | None = None  # the class its noted numbers explain (the manifest's object), when it has a note


class Examples:
    """The example images of ``folder``. With an ``examples.json`` manifest its images come with labels, exact masks
    and notes. The manifest is a list of entries, or an object whose ``examples`` is that list (the web bundle's,
    :mod:`dapt_core.experiments.web_bundle_report`); an entry has ``file`` and optionally ``view``, ``mask``,
    ``caption`` (else the label is made of ``split``, ``object`` and ``background``) and ``note``. Without a
    manifest every image file is an example, except ``*_mask.*`` files. An upload is recognised as an example by
    its bytes, so its exact mask and note are found whatever the upload was called. ``cam_method``: the
    attribution map the examples' numbers were measured with (the object manifest's first ``cam_methods``), else
    None; ``prompt_pair``: the file stems of the (base, DAPT) prompt sets whose difference picked the examples (the
    object manifest's ``rule`` and ``prompt_sets``), else None."""

    def __init__(self, folder: Path = EXAMPLE_DIR) -> None:
        self.items: list[Example] = []
        self.cam_method: str | None = None
        self.prompt_pair: tuple[str, str] | None = None
        manifest = folder / EXAMPLE_MANIFEST
        if manifest.is_file():
            try:
                entries = json.loads(manifest.read_text(encoding="utf-8"))
                if isinstance(entries, dict):
                    measured = (entries.get("cam_methods") or [None])[0]
                    self.cam_method = measured if isinstance(measured, str) else None
                    self.prompt_pair = _prompt_pair(entries)
                    entries = entries["examples"]
                self.items = [self._from_entry(folder, e) for e in entries]
            except (ValueError, KeyError, TypeError, OSError) as err:
                log.warning("ignoring the broken example manifest %s: %s", manifest, err)
        if not self.items and folder.is_dir():
            self.items = [Example(p, p.stem.replace("_", " "), None) for p in sorted(folder.iterdir())
                          if p.suffix.lower() in EXAMPLE_SUFFIXES and not p.name.startswith(".")
                          and not p.stem.endswith(MASK_SUFFIX)]
        self.items = [e for e in self.items if e.image.is_file()]
        self._by_digest = {_digest(e.image): e for e in self.items if e.note or e.mask is not None}
        self._masks = {digest: e.mask for digest, e in self._by_digest.items()
                       if e.mask is not None and e.mask.is_file()}

    @staticmethod
    def _from_entry(folder: Path, entry: dict) -> Example:
        view = folder / (entry.get("view") or entry["file"])
        words = [entry.get("split"), " on ".join(w for w in (entry.get("object"), entry.get("background")) if w)]
        label = entry.get("caption") or ": ".join(w for w in words if w) or view.stem
        note = entry.get("note")
        if note is not None and not isinstance(note, str):
            raise TypeError(f"{entry['file']}: its note is not text")
        true_class = entry.get("object") if note is not None and isinstance(entry.get("object"), str) else None
        return Example(view, label, folder / entry["mask"] if entry.get("mask") else None, note, true_class)

    def exact_mask(self, path: Path) -> np.ndarray | None:
        """The exact (H, W) bool object mask of an upload that is one of the examples, else None."""
        if not self._masks:
            return None
        mask_path = self._masks.get(_digest(path))
        return None if mask_path is None else read_mask_file(mask_path) >= MASK_THRESHOLD

    def target(self, path: Path | None, current: str) -> str:
        """The class to explain for a new picture: a noted example's true class (its numbers are that class's
        maps); for any other picture ``current``, unless ``current`` is one an example filled in (then "")."""
        found = self._find(path)
        if found is not None and found.true_class:
            return found.true_class
        filled = {e.true_class for e in self._by_digest.values() if e.true_class}
        return "" if current.strip() in filled else current

    def _find(self, path: Path | None) -> Example | None:
        if path is None or not self._by_digest:
            return None
        try:
            return self._by_digest.get(_digest(path))
        except OSError:  # an upload that is gone meanwhile
            return None

    def note(self, path: Path | None) -> str:
        """The note of an upload that is one of the examples (its numbers, in markdown), else ``""``."""
        if not any(e.note for e in self._by_digest.values()):
            return ""
        found = self._find(path)
        return (found.note or "") if found is not None else ""


def _prompt_pair(manifest: dict) -> tuple[str, str] | None:
    """The prompt-set stems of an object manifest's (base, DAPT) pair, when it names both."""
    rule, stems = manifest.get("rule") or {}, manifest.get("prompt_sets") or {}
    pair = tuple(stems.get(rule.get(side)) for side in ("base", "dapt"))
    return pair if all(isinstance(stem, str) for stem in pair) else None


def example_dir_for(backbone: Backbone) -> Path:
    """The scenes of a synthetic world for the backbones trained on it (:data:`EXAMPLE_DIRS`), photographs for
    every other one."""
    return EXAMPLE_DIRS.get(backbone.name, PHOTO_DIR)


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def parse_classnames(text: str | None) -> list[str] | None:
    """A comma-separated class list; None when empty (use the lists stored with the prompt sets)."""
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    if not names:
        return None
    return clean_classnames(names)


class TempFiles:
    """A private temporary folder for files handed to visitors, pruned of files older than ``max_age_s``.

    It is removed when the object goes or the process exits; its ``.owner`` file is locked while the process
    runs, so that the next app removes the folder of a process that was killed (see :mod:`leftovers`).
    ``parent``: the system's temporary directory by default.
    """

    def __init__(self, prefix: str = TEMP_PREFIX, max_age_s: float = TEMP_MAX_AGE_S,
                 parent: Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        self.max_age_s = max_age_s
        try:
            lock = hold_owner_lock(self.root)
        except OSError:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        weakref.finalize(self, _remove_temp_root, self.root, lock)  # also runs when the process exits

    def new_dir(self) -> Path:
        self.prune()
        return Path(tempfile.mkdtemp(dir=self.root))

    def prune(self) -> None:
        cutoff = time.time() - self.max_age_s
        for child in self.root.iterdir():
            if child.name == OWNER_FILE:
                continue
            try:
                if child.stat().st_mtime < cutoff:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            except OSError:
                log.debug("could not prune %s", child, exc_info=True)


def _remove_temp_root(root: Path, lock: int | None) -> None:
    release(lock)
    shutil.rmtree(root, ignore_errors=True)
