"""The DAPT objective: decouple each image into foreground and background, then align each part.

The losses are pure functions of tensors; :func:`loss_weights` is the schedule that weighs them, and
:func:`dapt_losses` puts them together for one batch of any prompt learner.

How the background prompts are built depends on the learner, as in the official code:

- **MaPLe** (the official DAPT): the hand-written text ``"a clean origami {word}."`` is embedded as it is
  at the input, with no learned context there; from layer 1 on, MaPLe's deep text prompts overwrite
  positions 1..n_ctx, exactly as for the class prompts. The background view's image features are not
  detached (:attr:`DaptConfig.detach_background_view` is False), so the background term also trains the
  visual prompts, and through the deep text prompts the text side.
- **CoOp** (no official DAPT exists): a plain-text prompt would be frozen CLIP and the background term could
  move nothing, so the background prompts keep the learned context: ``[SOS][ctx] {word}.[EOS]``
  (:attr:`DaptConfig.context_background_template`); a class-specific context is averaged over classes.

The background vocabulary is all 32 words the official code appends (its slice fault let only the last 25
reach the loss and the first seven into the class logits; see :mod:`dapt_core.backgrounds`). Background
prompts never enter the class logits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F

from dapt_core.attention.descriptions import DEFAULT_METHOD, METHOD_DESCRIPTIONS
from dapt_core.backgrounds import OFFICIAL_BACKGROUNDS, check_background_words
from dapt_core.constants import CAM_THRESHOLD, DAPT_RECORD_DEFAULTS, OFFICIAL_EPOCHS, OFFICIAL_SWITCH_EPOCH
from dapt_core.learners.base import PromptLearner
from dapt_core.preprocess import split_views

log = logging.getLogger(__name__)

CUES = ("off", "gradcam", "mask")
# official: the release's epoch switch as it is (epoch >= switch_epoch), whatever the run's length;
# scaled: that switch compressed to the run's length; joint: every term at every epoch.
SCHEDULES = ("official", "scaled", "joint")
TERMS = ("triplet", "foreground", "background")


@dataclass
class DaptConfig:
    cue: str = "off"  # where foreground masks come from: off (plain learner), gradcam (coarse), mask (fine)
    triplet_weight: float = 0.8  # pull-push regulariser on the visual side
    foreground_weight: float = 0.1  # foreground view aligned with the class text
    background_weight: float = 0.5  # background view aligned with the background vocabulary
    margin: float = 1.5  # triplet margin on L2-normalised embeddings
    schedule: str = "official"  # one of SCHEDULES (see run_switch_epoch)
    switch_epoch: int = OFFICIAL_SWITCH_EPOCH  # official schedule: epochs < this use the triplet, later fg + bg
    background_words: tuple[str, ...] = field(default=OFFICIAL_BACKGROUNDS)  # background class vocabulary
    background_template: str = "a clean origami {}."  # plain-text background prompt (MaPLe, official)
    context_background_template: str = "{}."  # text after the learned context (CoOp's background prompts)
    detach_background_view: bool = False  # True: the background term cannot train the image side (official: False)
    cam_method: str = DEFAULT_METHOD  # coarse cue's attribution map (attention.cam.CAM_METHODS; official: gradcam)
    cam_threshold: float = CAM_THRESHOLD  # coarse cue: a pixel is foreground where map / max(map) >= this

    def __post_init__(self) -> None:
        """Checks every field; a bad value raises ValueError naming it, before anything heavy loads."""
        if self.cue not in CUES:
            raise ValueError(f"unknown DAPT cue {self.cue!r}; choose from {', '.join(CUES)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown DAPT schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")
        for name in ("triplet_weight", "foreground_weight", "background_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"DAPT {name} must be a number >= 0, got {value!r}")
        if not self.margin > 0:
            raise ValueError(f"DAPT margin must be > 0, got {self.margin!r}")
        if isinstance(self.switch_epoch, bool) or not isinstance(self.switch_epoch, int) or self.switch_epoch < 0:
            raise ValueError(f"DAPT switch_epoch must be an integer >= 0, got {self.switch_epoch!r}")
        if self.cam_method not in METHOD_DESCRIPTIONS:
            raise ValueError(f"unknown DAPT cue method {self.cam_method!r} (the attribution map of the gradcam "
                             f"cue); choose from {', '.join(METHOD_DESCRIPTIONS)}")
        if not 0.0 < self.cam_threshold <= 1.0:
            raise ValueError(f"DAPT cam_threshold must lie in (0, 1], got {self.cam_threshold!r}")
        for name in ("background_template", "context_background_template"):
            template = getattr(self, name)
            if not isinstance(template, str) or template.count("{}") != 1 or "{" in template.replace("{}", ""):
                raise ValueError(f"DAPT {name} must hold exactly one '{{}}' for the word, got {template!r}")
        self.background_words = check_background_words(self.background_words)

    @property
    def enabled(self) -> bool:
        return self.cue != "off"

    @classmethod
    def from_record(cls, record: dict) -> DaptConfig:
        """The config a prompt set's metadata records (``asdict`` of one, as JSON).

        A field the record lacks takes the value every set written before the field existed was trained with
        (:data:`~dapt_core.constants.DAPT_RECORD_DEFAULTS`; ``cam_method``: the official Grad-CAM cue), else its
        default. A field this class does not have raises ValueError naming it, as does a bad value.
        """
        if not isinstance(record, dict):
            raise ValueError(f"a DAPT config record must be an object of fields, got {type(record).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(record) - known)
        if unknown:
            raise ValueError(f"the DAPT config record has unknown field(s) {', '.join(unknown)}")
        return cls(**{**DAPT_RECORD_DEFAULTS, **record})


# --- the schedule ------------------------------------------------------------------------------------------

def scaled_switch_epoch(epochs: int) -> int:
    """The official switch (epoch 7 of 10) compressed to a run of ``epochs``: ``round(0.7 * epochs)``, kept
    within [1, epochs - 1] so that both phases get an epoch (a 1-epoch run has only the alignment phase)."""
    if epochs < 1:
        raise ValueError(f"a run needs at least one epoch, got {epochs}")
    return min(epochs - 1, max(1, round(epochs * OFFICIAL_SWITCH_EPOCH / OFFICIAL_EPOCHS)))


def run_switch_epoch(cfg: DaptConfig, epochs: int | None) -> int | None:
    """First (0-based) epoch of the alignment phase in a run of ``epochs`` epochs; None for ``joint``.

    ``official`` keeps ``cfg.switch_epoch`` whatever the run's length (the official 5-epoch base-to-novel run
    never reaches epoch 7, so there it only ever uses the triplet term); ``scaled`` uses
    :func:`scaled_switch_epoch` and needs ``epochs``.
    """
    if cfg.schedule == "joint":
        return None
    if cfg.schedule == "official":
        return cfg.switch_epoch
    if epochs is None:
        raise ValueError("the scaled DAPT schedule needs the run's number of epochs")
    return scaled_switch_epoch(epochs)


def _configured_weights(cfg: DaptConfig) -> dict[str, float]:
    return {"triplet": cfg.triplet_weight, "foreground": cfg.foreground_weight,
            "background": cfg.background_weight}


def loss_weights(epoch: int, cfg: DaptConfig, epochs: int | None = None) -> dict[str, float]:
    """Weights of the three regularisers at a given (0-based) epoch of a run of ``epochs`` epochs."""
    if not cfg.enabled:
        return {term: 0.0 for term in TERMS}
    full = _configured_weights(cfg)
    switch = run_switch_epoch(cfg, epochs)
    if switch is None:
        return full
    early = epoch < switch
    return {"triplet": full["triplet"] if early else 0.0,
            "foreground": 0.0 if early else full["foreground"],
            "background": 0.0 if early else full["background"]}


def unreached_terms(cfg: DaptConfig, epochs: int) -> list[str]:
    """Terms with a weight > 0 that the schedule gives weight 0 at every epoch of a run of ``epochs``."""
    if not cfg.enabled:
        return []
    configured = _configured_weights(cfg)
    reached = {term for e in range(epochs) for term, w in loss_weights(e, cfg, epochs).items() if w > 0}
    return [term for term in TERMS if configured[term] > 0 and term not in reached]


def warn_unreached_terms(cfg: DaptConfig, epochs: int) -> list[str]:
    """Logs a warning when the run's schedule never uses a term (reproduced faithfully, not hidden)."""
    missing = unreached_terms(cfg, epochs)
    if missing:
        log.warning("DAPT schedule %r (alignment from epoch %s) over %d epoch(s) never uses the %s term(s)",
                    cfg.schedule, run_switch_epoch(cfg, epochs), epochs, ", ".join(missing))
    return missing


# --- the losses --------------------------------------------------------------------------------------------

# DAPT's split of each image into its foreground and background views (``x * m``, ``x * (1 - m)``; hidden
# pixels become the data set's mean colour): the one implementation every caller shares
decouple = split_views


def foreground_alignment_loss(fg_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor,
                              logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Cross-entropy of the foreground view against the true class; trains the text side only.

    Args:
        fg_features: (B, E) normalised features of the foreground views (detached here).
        text_features: (C, E) normalised class text features.
        labels: (B,) true classes.
        logit_scale: CLIP's temperature ``tau`` (already exponentiated).
    """
    return F.cross_entropy(logit_scale * fg_features.detach() @ text_features.t(), labels)


def background_alignment_loss(bg_features: torch.Tensor, bg_text_features: torch.Tensor,
                              logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Cross-entropy of the background view against its most similar background word (a pseudo-label).

    Gradients reach both inputs (the official code detaches neither); detach ``bg_features`` before the
    call to keep the term off the image side.

    Args:
        bg_features: (B, E) normalised features of the background views.
        bg_text_features: (K, E) normalised features of the background prompts.
        logit_scale: CLIP's temperature.
    """
    logits = logit_scale * bg_features @ bg_text_features.t()
    return F.cross_entropy(logits, logits.detach().argmax(dim=1))


def pull_push_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                   margin: float) -> torch.Tensor:
    """Triplet loss ``mean(max(|a - p| - |a - n| + margin, 0))`` pulling the whole image's embedding
    towards its foreground view and away from its background view (both views detached)."""
    return F.triplet_margin_loss(anchor, positive.detach(), negative.detach(), margin=margin)


def background_prompts(learner: PromptLearner, cfg: DaptConfig) -> list[str]:
    """The background prompt texts as the learner encodes them: the whole plain text for MaPLe
    (``"a clean origami ground."``), the text after the learned context for CoOp (``"ground."``)."""
    template = cfg.context_background_template if learner.background_in_context else cfg.background_template
    return [template.format(word) for word in cfg.background_words]


def background_text_features(learner: PromptLearner, cfg: DaptConfig) -> torch.Tensor:
    """(K, E) normalised features of the K background prompts, built as the module docstring says."""
    prompts = background_prompts(learner, cfg)
    if learner.background_in_context:
        return learner.prompt_text_features(prompts)
    return learner.plain_prompt_features(prompts)


def dapt_losses(learner: PromptLearner, images: torch.Tensor, masks: torch.Tensor | None, labels: torch.Tensor,
                epoch: int, cfg: DaptConfig, epochs: int | None = None, *, fast: bool = True) -> dict[str, torch.Tensor]:
    """All loss terms of one batch; ``total`` is what to back-propagate.

    Background prompts are encoded on their own, so they never enter the class logits. The views go through
    the image encoder batched (the official code makes three calls). On the fast path a view whose features
    every loss detaches (the foreground view always; the background view unless the background term trains
    through it) runs without autograd, so the backward skips it, and a triplet term that nothing learned reaches
    is left out (:func:`active_terms`): the gradients are the plain path's (to fp32 rounding), and so is every
    loss term the fast path returns.

    Args:
        images: (B, 3, H, W) normalised images.
        masks: (B, 1, H, W) foreground masks in [0, 1]; ignored when DAPT is off.
        labels: (B,) class indices.
        epoch: the (0-based) epoch, for the schedule.
        epochs: the run's number of epochs (needed by the ``scaled`` schedule).
        fast: False runs the plain path: the three views in one call with autograd.
    """
    active = active_terms(learner, epoch, cfg, epochs, fast=fast)
    if active:
        if masks is None:
            raise ValueError("DAPT needs a foreground mask for every image")
        image_features, fg_features, bg_features = _view_features(learner, images, masks, active, cfg, fast)
    else:
        image_features = learner.encode_image(images)
    text_features = learner.text_features()
    scale = learner.backbone.logit_scale
    terms = {"ce": F.cross_entropy(scale * image_features @ text_features.t(), labels)}
    if "triplet" in active:
        terms["triplet"] = pull_push_loss(image_features, fg_features, bg_features, cfg.margin)
    if "foreground" in active:
        terms["foreground"] = foreground_alignment_loss(fg_features, text_features, labels, scale)
    if "background" in active:
        view = bg_features.detach() if cfg.detach_background_view else bg_features
        terms["background"] = background_alignment_loss(view, background_text_features(learner, cfg), scale)
    terms["total"] = terms["ce"] + sum(active[k] * terms[k] for k in active)
    return terms


def active_terms(learner: PromptLearner, epoch: int, cfg: DaptConfig, epochs: int | None = None, *,
                 fast: bool = True) -> dict[str, float]:
    """The regularisers a step computes at ``epoch``: those the schedule weighs above zero, except (``fast``) a
    triplet term that nothing learned reaches when it is the only one.

    The triplet term reaches the prompts only through the whole image's features (both views are detached). A
    learner with a frozen image side (CoOp; :attr:`PromptLearner.learns_image_side`) makes it a constant: its
    gradient is zero, and leaving it out changes no gradient and no learned prompt. Where it is the only term
    (the official schedule's first phase over CoOp) the step then needs no view at all, and a run's Grad-CAM
    cue need not be refreshed for that epoch (:func:`needs_views`). Beside other terms it costs nothing more
    (the views are there) and is kept. The plain path (``fast=False``) computes it always, as the official
    code does.
    """
    active = {k: w for k, w in loss_weights(epoch, cfg, epochs).items() if w > 0}
    if fast and set(active) == {"triplet"} and not _learns_image_side(learner):
        return {}
    return active


def _learns_image_side(learner: PromptLearner) -> bool:
    # a learner that does not say its image side is frozen is taken to learn it
    return getattr(learner, "learns_image_side", True)


def needs_views(learner: PromptLearner, epoch: int, cfg: DaptConfig, epochs: int | None = None) -> bool:
    """Whether a (fast) step at ``epoch`` uses the foreground/background views, and so the masks."""
    return bool(active_terms(learner, epoch, cfg, epochs))


def _view_features(learner: PromptLearner, images: torch.Tensor, masks: torch.Tensor, active: dict[str, float],
                   cfg: DaptConfig, fast: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, E) features of the full image, its foreground view and its background view.

    The full image always carries a graph (the CE term); the background view carries one only when the
    background term trains through it (active and not ``detach_background_view``); the foreground view never
    does (the triplet and the foreground term detach it). A learner without visual prompts (CoOp) has a frozen
    image side, where no view has a graph to carry: its three views go through the tower in one call. The
    plain path gives every view a graph.
    """
    batch = images.shape[0]
    fg, bg = decouple(images, masks)
    if not fast:
        return learner.encode_image(torch.cat([images, fg, bg])).split(batch)  # (3B, E) -> 3 x (B, E)
    if not _learns_image_side(learner):
        with torch.no_grad():
            return learner.encode_image(torch.cat([images, fg, bg])).split(batch)
    if "background" in active and not cfg.detach_background_view:
        image_features, bg_features = learner.encode_image(torch.cat([images, bg])).split(batch)
        with torch.no_grad():
            fg_features = learner.encode_image(fg)
        return image_features, fg_features, bg_features
    image_features = learner.encode_image(images)
    with torch.no_grad():
        fg_features, bg_features = learner.encode_image(torch.cat([fg, bg])).split(batch)
    return image_features, fg_features, bg_features
