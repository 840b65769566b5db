"""The DAPT objective: decouple each image into foreground and background, then align each part.

The losses are pure functions of tensors; :func:`loss_weights` is the schedule that weighs them, and
:func:`dapt_losses` puts them together for one batch of any prompt learner.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dapt_core.learners.base import PromptLearner

# The background vocabulary of the official release (METHOD.md), and its extra words for food data sets.
OFFICIAL_BACKGROUNDS: tuple[str, ...] = (
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea", "railway",
    "railroad", "keyboard", "helmet", "cloud", "house", "mountain", "ocean", "road", "rock", "street",
    "valley", "bridge", "sign",
)
FOOD_BACKGROUNDS: tuple[str, ...] = ("table", "forks", "tablecloth", "hands", "spoon", "glasses", "dishes")

CUES = ("off", "gradcam", "mask")
SCHEDULES = ("official", "joint")


@dataclass
class DaptConfig:
    cue: str = "off"  # where foreground masks come from: off (plain learner), gradcam (coarse), mask (fine)
    triplet_weight: float = 0.8  # pull-push regulariser on the visual side
    foreground_weight: float = 0.1  # foreground view aligned with the class text
    background_weight: float = 0.5  # background view aligned with the background vocabulary
    margin: float = 1.5  # triplet margin on L2-normalised embeddings
    schedule: str = "official"  # official: triplet first, then the alignment terms; joint: all at once
    switch_epoch: int = 7  # official schedule: epochs < switch_epoch use the triplet, later ones fg + bg
    background_words: tuple[str, ...] = field(default=OFFICIAL_BACKGROUNDS)  # background class vocabulary
    background_template: str = "a clean origami {}."  # text after the learned context for background words
    cam_threshold: float = 0.5  # Grad-CAM cue: a pixel is foreground where CAM / max(CAM) >= this

    def __post_init__(self) -> None:
        if self.cue not in CUES:
            raise ValueError(f"unknown DAPT cue {self.cue!r}; choose from {', '.join(CUES)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown DAPT schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")
        if not self.background_words:
            raise ValueError("the background vocabulary is empty")
        self.background_words = tuple(self.background_words)

    @property
    def enabled(self) -> bool:
        return self.cue != "off"


def loss_weights(epoch: int, cfg: DaptConfig) -> dict[str, float]:
    """Weights of the three regularisers at a given (0-based) epoch."""
    if not cfg.enabled:
        return {"triplet": 0.0, "foreground": 0.0, "background": 0.0}
    if cfg.schedule == "joint":
        return {"triplet": cfg.triplet_weight, "foreground": cfg.foreground_weight,
                "background": cfg.background_weight}
    early = epoch < cfg.switch_epoch
    return {"triplet": cfg.triplet_weight if early else 0.0,
            "foreground": 0.0 if early else cfg.foreground_weight,
            "background": 0.0 if early else cfg.background_weight}


def decouple(images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground and background views of normalised images.

    Args:
        images: (B, 3, H, W) images normalised with the data set mean and std.
        masks: (B, 1, H, W) foreground masks in [0, 1].

    Returns:
        ``(x * m, x * (1 - m))``: hidden pixels become 0 in normalised space, i.e. the data set mean colour.
    """
    return images * masks, images * (1.0 - masks)


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

    Args:
        bg_features: (B, E) normalised features of the background views (detached here).
        bg_text_features: (K, E) normalised features of the background prompts.
        logit_scale: CLIP's temperature.
    """
    logits = logit_scale * bg_features.detach() @ bg_text_features.t()
    return F.cross_entropy(logits, logits.detach().argmax(dim=1))


def pull_push_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                   margin: float) -> torch.Tensor:
    """Triplet loss ``mean(max(|a - p| - |a - n| + margin, 0))`` pulling the whole image's embedding
    towards its foreground view and away from its background view (both views detached)."""
    return F.triplet_margin_loss(anchor, positive.detach(), negative.detach(), margin=margin)


def dapt_losses(learner: PromptLearner, images: torch.Tensor, masks: torch.Tensor | None, labels: torch.Tensor,
                epoch: int, cfg: DaptConfig) -> dict[str, torch.Tensor]:
    """All loss terms of one batch; ``total`` is what to back-propagate.

    The full image and (when DAPT is on) its foreground and background views go through the image encoder
    in ONE batched call. Background prompts are encoded on their own, so they never enter the class logits.

    Args:
        images: (B, 3, H, W) normalised images.
        masks: (B, 1, H, W) foreground masks in [0, 1]; ignored when DAPT is off.
        labels: (B,) class indices.
    """
    weights = loss_weights(epoch, cfg)
    active = {k: w for k, w in weights.items() if w > 0}
    batch = images.shape[0]
    if active:
        if masks is None:
            raise ValueError("DAPT needs a foreground mask for every image")
        fg, bg = decouple(images, masks)
        features = learner.encode_image(torch.cat([images, fg, bg]))  # (3B, E)
        image_features, fg_features, bg_features = features.split(batch)
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
        prompts = [cfg.background_template.format(w) for w in cfg.background_words]
        terms["background"] = background_alignment_loss(bg_features, learner.prompt_text_features(prompts), scale)
    terms["total"] = terms["ce"] + sum(active[k] * terms[k] for k in active)
    return terms
