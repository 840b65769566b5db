"""Where does each prompt set look? One image, several prompt sets: predictions, CAMs, a foreground mask, numbers.

:func:`analyze` squashes the whole image to the model's S x S input (no crop, so the CAM covers every pixel),
asks every prompt set for its top-5 and a class activation map, finds the object with a segmenter (or takes a
given mask), and measures how much of each CAM lies on the object. Prompt sets that share the frozen image
tower (CoOp-kind) share one image forward; MaPLe sets get one each; class text features are cached per prompt
set (:mod:`dapt_core.attention.shared`). Everything that runs the shared model holds ``backbone.lock``, so
concurrent calls (two visitors of the app) never see each other's hooks.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import cv2
import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from dapt_core.attention.metrics import MASK_THRESHOLD, as_mask, object_share, pointing_game
from dapt_core.data.masks import aspect_ratios_match
from dapt_core.backbones import Backbone
from dapt_core.errors import DaptError
from dapt_core.imageio import DEFAULT_MAX_PIXELS, ImageSource, image_to_array, load_image
from dapt_core.learners.base import PromptLearner
from dapt_core.preprocess import to_model_input
from dapt_core.segment.scoring import mask_scorer
from dapt_core.attention.shared import SetCam, check_method, class_text_features, prompt_set_cams

if TYPE_CHECKING:
    from dapt_core.segment import SegmentResult, Segmenter

log = logging.getLogger(__name__)

TOP_K = 5  # predictions reported per prompt set
CLASSES_SHOWN_IN_ERRORS = 30  # an error names at most this many classes (ImageNet has 1000)
LEARNER_LABELS = {"coop": "CoOp", "maple": "MaPLe"}
JSON_DIGITS = 4  # decimals of probabilities, shares and seconds in the JSON summary


class AnalysisError(DaptError):
    """Prompt sets, a target class or a mask that cannot be analysed together."""


@dataclass
class PromptSetResult:
    """What one prompt set makes of the image."""

    name: str  # display name (checkpoint name or what the caller passed)
    label: str  # what kind of prompt set, e.g. "CoOp + DAPT (mask)"
    top5: list[tuple[str, float]]  # (class, probability in [0, 1]), best first
    target: str  # the class the CAM explains
    cam: np.ndarray  # (H, W) float32 in [0, 1] at image resolution
    object_share: float | None  # share of CAM energy inside the mask (NaN for an all-zero CAM); None without one
    pointing_hit: bool | None  # whether the CAM's peak is on the object; None without a mask


@dataclass
class AnalysisResult:
    """Everything :func:`analyze` found, ready for a figure or a JSON line."""

    image: np.ndarray  # (H, W, 3) uint8, the analysed image (after load_image)
    mask: np.ndarray | None  # (H, W) bool foreground used for the numbers and the split
    segmentation: SegmentResult | None  # the segmenter's answer; None for a given mask or none at all
    results: list[PromptSetResult]  # one per prompt set, in the order given
    cam_method: str  # key of dapt_core.attention.cam.CAM_METHODS
    # seconds per stage: load, text, forward (image forwards), cam (gradients, maps, resizing), segment, metrics,
    # total
    timings: dict[str, float] = field(default_factory=dict)
    shared_forward: bool = False  # whether two or more prompt sets shared one image forward

    @property
    def mask_source(self) -> str | None:
        """``"segmenter"``, ``"given"`` or None."""
        if self.mask is None:
            return None
        return "segmenter" if self.segmentation is not None else "given"

    def figure(self, title: str | None = None) -> Figure:
        """The side-by-side comparison (:func:`dapt_core.viz.figure.comparison_figure`); its title names the
        attribution method of the maps."""
        from dapt_core.viz.figure import PanelResult, comparison_figure

        panels = [PanelResult(r.name if r.name == r.label else f"{r.name}\n{r.label}", r.cam, r.top5,
                              r.object_share, r.pointing_hit) for r in self.results]
        source = self.segmentation.segmenter if self.segmentation is not None else self.mask_source
        heading = f"{title} ({self.cam_method} maps)" if title else f"{self.cam_method} maps"
        return comparison_figure(self.image, self.mask, panels, title=heading, segmenter=source)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able summary: per prompt set top-5, target, share and pointing hit; segmenter; timings."""
        def share(value: float | None) -> float | None:
            return None if value is None or math.isnan(value) else round(value, JSON_DIGITS)

        seg = self.segmentation
        return {
            "image_size": [int(self.image.shape[0]), int(self.image.shape[1])],
            "cam_method": self.cam_method,
            "segmenter": seg.segmenter if seg is not None else None,
            "mask_source": self.mask_source,
            "segment_prompt": (seg.candidates[seg.chosen].prompt
                               if seg is not None and seg.chosen is not None and seg.candidates else None),
            "shared_forward": self.shared_forward,
            "prompt_sets": [{"name": r.name, "label": r.label, "target": r.target,
                             "top5": [[c, round(float(p), JSON_DIGITS)] for c, p in r.top5],
                             "object_share": share(r.object_share), "pointing_hit": r.pointing_hit}
                            for r in self.results],
            "timings": {k: round(v, JSON_DIGITS) for k, v in self.timings.items()},
        }


def analyze(image: ImageSource, prompt_sets: list[PromptLearner] | list[tuple[str, PromptLearner]], *,
            segmenter: str | Segmenter | None = "cam", cam_method: str = "gradcam", target: str | None = None,
            mask: np.ndarray | None = None, share_forward: bool = True,
            max_pixels: int | None = None) -> AnalysisResult:
    """Predictions, CAMs and attention-on-object numbers of several prompt sets on one image.

    Args:
        image: anything :func:`dapt_core.imageio.load_image` reads (path, bytes, PIL image, array).
        prompt_sets: learners, or (display name, learner) pairs, on one backbone with one class list.
        segmenter: a segmenter name (:func:`dapt_core.segment.get_segmenter`), a segmenter, or None. It is
            given the first prompt set's image-sized CAM and a ``score_masks`` that keeps each mask's pixels
            (the rest becomes the data set's mean colour) and returns the first set's probability of its CAM
            class; both are for that set's target class, which is its prediction unless ``target`` is named.
        cam_method: a key of :data:`dapt_core.attention.cam.CAM_METHODS`.
        target: the class every CAM explains; None = each set's own predicted class.
        mask: (H, W) bool or [0, 1] ground-truth foreground; wins over ``segmenter``.
        share_forward: let CoOp-kind prompt sets share one image forward (False: one forward each).
        max_pixels: the largest image accepted (width * height); the library default when None.

    Returns:
        An :class:`AnalysisResult`; CAMs are at the image's resolution.

    Raises:
        AnalysisError: no prompt sets, several backbones or class lists, an unknown target, a bad mask.
        dapt_core.imageio.ImageInputError: the image cannot be read.
    """
    started = time.perf_counter()
    named = _named_sets(prompt_sets)
    learners = [learner for _, _, learner in named]
    check_method(cam_method)
    classnames = _common_classes(named)
    target_index = None if target is None else _class_index(target, classnames)
    timings: dict[str, float] = {}

    pixels, given, batch = _load_input(image, mask, max_pixels, learners[0].backbone, timings)
    set_cams, text_features, shared = _run_sets(learners, batch, target_index, cam_method, share_forward, timings)
    cams = _image_sized_cams(set_cams, pixels.shape[:2], timings)

    segmentation = None
    fg = given
    if fg is None and segmenter is not None:
        tick = time.perf_counter()
        scorer = mask_scorer(learners[0], text_features[0], batch, set_cams[0].target)
        segmentation = _segment(segmenter, pixels, cams[0], scorer)
        fg = segmentation.mask
        timings["segment"] = time.perf_counter() - tick

    tick = time.perf_counter()
    results = _set_results(named, set_cams, cams, classnames, fg)
    timings["metrics"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - started
    return AnalysisResult(image=pixels, mask=fg, segmentation=segmentation, results=results,
                          cam_method=cam_method, timings=timings, shared_forward=shared)


def _load_input(image: ImageSource, mask: np.ndarray | None, max_pixels: int | None, backbone: Backbone,
                timings: dict[str, float]) -> tuple[np.ndarray, np.ndarray | None, torch.Tensor]:
    """The image as (H, W, 3) uint8 pixels, the caller's mask at its size (or None) and the (1, 3, S, S) model
    input; the seconds go to ``timings["load"]``."""
    tick = time.perf_counter()
    picture = load_image(image, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    pixels = image_to_array(picture)
    given = None if mask is None else _given_mask(mask, pixels.shape[:2])
    batch = _model_input(picture, backbone)
    timings["load"] = time.perf_counter() - tick
    return pixels, given, batch


def _image_sized_cams(set_cams: list[SetCam], shape: tuple[int, int], timings: dict[str, float]) -> list[np.ndarray]:
    """Each set's S x S map resized to the (H, W) image; the seconds are added to ``timings["cam"]``."""
    tick = time.perf_counter()
    cams = [_to_image_size(c.cam, shape[0], shape[1]) for c in set_cams]
    timings["cam"] += time.perf_counter() - tick
    return cams


def _set_results(named: list[tuple[str, str, PromptLearner]], set_cams: list[SetCam], cams: list[np.ndarray],
                 classnames: list[str], fg: np.ndarray | None) -> list[PromptSetResult]:
    """Each set's top-5, target, image-sized CAM and, with a foreground, its share on the object and pointing hit."""
    return [PromptSetResult(name=name, label=label, top5=_top_k(set_cam.logits, classnames),
                            target=classnames[set_cam.target], cam=cam,
                            object_share=None if fg is None else object_share(cam, fg),
                            pointing_hit=None if fg is None else pointing_game(cam, fg))
            for (name, label, _), set_cam, cam in zip(named, set_cams, cams)]


def _run_sets(learners: list[PromptLearner], batch: torch.Tensor, target: int | None, method: str,
              share_forward: bool, timings: dict[str, float]) -> tuple[list[SetCam], list[torch.Tensor], bool]:
    """Text features, logits and S x S CAMs of every set, under the backbone's lock."""
    with learners[0].backbone.lock:
        tick = time.perf_counter()
        text_features = [class_text_features(learner) for learner in learners]
        timings["text"] = time.perf_counter() - tick
        set_cams, forwards = prompt_set_cams(learners, text_features, batch, [target] * len(learners), method,
                                             share=share_forward, timings=timings)
    return set_cams, text_features, forwards < len(learners)


def _named_sets(prompt_sets: list) -> list[tuple[str, str, PromptLearner]]:
    """(unique display name, label, learner) per prompt set."""
    if not prompt_sets:
        raise AnalysisError("analyze needs at least one prompt set")
    named, seen = [], set()
    for i, entry in enumerate(prompt_sets):
        given_name, learner = entry if isinstance(entry, tuple) else (None, entry)
        if not isinstance(learner, PromptLearner):
            raise AnalysisError(f"prompt set {i + 1} is a {type(learner).__name__}, not a PromptLearner")
        info = getattr(learner, "info", None)
        label = info.label if info is not None else LEARNER_LABELS.get(learner.kind, learner.kind)
        name = given_name or (info.name if info is not None else label)
        if name in seen:
            name = f"{name} #{i + 1}"
        seen.add(name)
        named.append((name, label, learner))
    return named


def _common_classes(named: list[tuple[str, str, PromptLearner]]) -> list[str]:
    first_name, _, first = named[0]
    for name, _, learner in named[1:]:
        if learner.backbone is not first.backbone:
            raise AnalysisError(f"prompt sets {first_name!r} ({first.backbone.name}) and {name!r} "
                                f"({learner.backbone.name}) are on different backbones; analyse them separately")
        if learner.classnames != first.classnames:
            raise AnalysisError(f"prompt sets {first_name!r} and {name!r} have different class lists "
                                f"({_shorten(first.classnames)} vs {_shorten(learner.classnames)}); give them "
                                "one list with set_classnames (CLI: --classes)")
    return first.classnames


def _shorten(names: list[str]) -> str:
    shown = ", ".join(names[:CLASSES_SHOWN_IN_ERRORS])
    return shown + (f", ... ({len(names)} classes)" if len(names) > CLASSES_SHOWN_IN_ERRORS else "")


def _class_index(target: str, classnames: list[str]) -> int:
    """Index of a class name; case, underscores and extra spaces are forgiven."""
    if target in classnames:
        return classnames.index(target)
    wanted = " ".join(target.replace("_", " ").split()).casefold()
    for i, name in enumerate(classnames):
        if name.casefold() == wanted:
            return i
    raise AnalysisError(f"unknown target class {target!r}; the classes are: {_shorten(classnames)}")


def _model_input(picture: Image.Image, backbone: Backbone) -> torch.Tensor:
    """(1, 3, S, S) normalised: the whole image squashed to the model's square input, no crop."""
    return to_model_input(picture, backbone.image_size, backbone.mean, backbone.std)[None].to(backbone.device)


def _to_image_size(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    resized = cv2.resize(cam.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    # bilinear weights are convex; clipping only removes float rounding
    return np.clip(resized, 0.0, 1.0).astype(np.float32)


def _top_k(logits: torch.Tensor, classnames: list[str]) -> list[tuple[str, float]]:
    probs = logits.float().softmax(dim=-1).cpu()
    values, indices = probs.topk(min(TOP_K, len(classnames)))
    return [(classnames[int(i)], float(v)) for v, i in zip(values, indices)]


def _given_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A caller's mask as (H, W) bool at the image's size."""
    values = as_mask(np.asarray(mask), "mask")
    if values.shape != shape:
        if not aspect_ratios_match((values.shape[1], values.shape[0]), (shape[1], shape[0])):
            raise AnalysisError(f"mask is {values.shape[1]}x{values.shape[0]} but the image is "
                                f"{shape[1]}x{shape[0]}; a mask must cover the same picture")
        log.info("rescaling the mask from %s to the image's %s", values.shape, shape)
        values = cv2.resize(values.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return values >= MASK_THRESHOLD


def _segment(segmenter: str | Segmenter, pixels: np.ndarray, cam: np.ndarray,
             scorer: Callable[[list[np.ndarray]], list[float]]) -> SegmentResult:
    from dapt_core.segment import SegmentContext, get_segmenter, pixel_hash

    tool = get_segmenter(segmenter) if isinstance(segmenter, str) else segmenter
    result = tool.segment(pixels, SegmentContext(cam=cam, score_masks=scorer, image_hash=pixel_hash(pixels)))
    found = np.asarray(result.mask)
    if found.shape != pixels.shape[:2]:
        raise AnalysisError(f"segmenter {tool.name!r} returned a {found.shape} mask for a "
                            f"{pixels.shape[:2]} image")
    result.mask = found.astype(bool)
    return result
