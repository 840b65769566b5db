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
BUNDLED_BACKBONE = "synth-mini"
REAL_WEIGHTS = "clip-vit-b-16-openai"
FETCH_COMMAND = f"python -m dapt_core weights fetch {REAL_WEIGHTS}"
BUNDLED_PROMPT_DIR = paths.CHECKPOINT_DIR / "prompts"
USER_PROMPT_DIR = Path(os.environ.get("DAPT_USER_PROMPTS", paths.CHECKPOINT_DIR / "user"))
EXAMPLE_DIR = paths.ASSETS_DIR / "examples"  # scenes of the synthetic world, for the backbones trained on it
PHOTO_DIR = paths.ASSETS_DIR / "photos"  # public-domain photographs, for backbones trained on photographs
SYNTHETIC_WORLD_BACKBONES = ("synth-mini", "tiny-vit")
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
    """Loads the backbone the app serves: ``forced`` if given, else ViT-B/16 (OpenAI), else synth-mini.

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
        return BackboneChoice(backbone, banner, None)
    try:
        return BackboneChoice(load_backbone(REAL_BACKBONE, device=device, download=download), None, None)
    except WeightsNotFoundError as err:
        log.warning("ViT-B/16 weights unavailable, falling back to %s: %s", BUNDLED_BACKBONE, err)
    try:
        backbone = load_backbone(BUNDLED_BACKBONE, device=device, download=False)
    except WeightsNotFoundError as err:
        log.error("no backbone can be loaded: %s", err)
        return BackboneChoice(None, None, (
            "No backbone could be loaded. The CLIP ViT-B/16 weights are not on this machine and could not be "
            f"downloaded, and the bundled synth-mini weights are missing too ({err}).\n\nFetch the real weights "
            f"on a machine that is online with `{FETCH_COMMAND}` (then restart the app), or start with "
            "`--backbone tiny-vit` to try the interface with random weights."))
    return BackboneChoice(backbone, (
        "Running on the bundled **synth-mini** backbone (a small CLIP trained on this project's synthetic "
        "shapes world), because the CLIP ViT-B/16 weights are not available offline. For real photos, fetch "
        f"them with `{FETCH_COMMAND}` and restart the app."), None)


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


class Examples:
    """The example images of ``folder``. With an ``examples.json`` manifest (entries with ``file``, and optionally
    ``view``, ``mask``, ``split``, ``object``, ``background``) its images come with labels and exact masks;
    otherwise every image file is an example, except ``*_mask.*`` files. An upload is recognised as an example
    by its bytes, so its exact mask can be used whatever the upload was called."""

    def __init__(self, folder: Path = EXAMPLE_DIR) -> None:
        self.items: list[Example] = []
        manifest = folder / EXAMPLE_MANIFEST
        if manifest.is_file():
            try:
                entries = json.loads(manifest.read_text(encoding="utf-8"))
                self.items = [self._from_entry(folder, e) for e in entries]
            except (ValueError, KeyError, TypeError, OSError) as err:
                log.warning("ignoring the broken example manifest %s: %s", manifest, err)
        if not self.items and folder.is_dir():
            self.items = [Example(p, p.stem.replace("_", " "), None) for p in sorted(folder.iterdir())
                          if p.suffix.lower() in EXAMPLE_SUFFIXES and not p.name.startswith(".")
                          and not p.stem.endswith(MASK_SUFFIX)]
        self.items = [e for e in self.items if e.image.is_file()]
        self._masks = {_digest(e.image): e.mask for e in self.items if e.mask is not None and e.mask.is_file()}

    @staticmethod
    def _from_entry(folder: Path, entry: dict) -> Example:
        view = folder / (entry.get("view") or entry["file"])
        words = [entry.get("split"), " on ".join(w for w in (entry.get("object"), entry.get("background")) if w)]
        label = ": ".join(w for w in words if w) or view.stem
        return Example(view, label, folder / entry["mask"] if entry.get("mask") else None)

    def exact_mask(self, path: Path) -> np.ndarray | None:
        """The exact (H, W) bool object mask of an upload that is one of the examples, else None."""
        if not self._masks:
            return None
        mask_path = self._masks.get(_digest(path))
        return None if mask_path is None else read_mask_file(mask_path) >= MASK_THRESHOLD


def example_dir_for(backbone: Backbone) -> Path:
    """Synthetic scenes for the backbones of the synthetic world, photographs for every other one."""
    return EXAMPLE_DIR if backbone.name in SYNTHETIC_WORLD_BACKBONES else PHOTO_DIR


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
