"""The contrastive losses of mini-CLIP pre-training, pure functions of embeddings and labels.

- :func:`clip_loss`: symmetric InfoNCE that knows which captions are true of which images, so a known false
  negative is left out (``positives="own"``) or counted as a positive (``"all_true"``);
- :func:`class_caption_loss`: each image against one caption per class (UniCL-style), so every step has a
  negative for every other class;
- :func:`probe_head_loss`: the auxiliary linear object and background heads on the image embedding.
"""

from __future__ import annotations

import torch
from torch import nn


def clip_loss(image_feats: torch.Tensor, text_feats: torch.Tensor, logit_scale: torch.Tensor,
              true_pairs: torch.Tensor | None = None, positives: str = "own") -> torch.Tensor:
    """Symmetric CLIP InfoNCE that knows which captions are true of which images.

    Args:
        image_feats: (B, E) L2-normalised image embeddings.
        text_feats: (B, E) L2-normalised embeddings of the paired captions (row i belongs to image i).
        logit_scale: scalar, the temperature's inverse (already exponentiated), > 0.
        true_pairs: (B, B) bool, True where caption j is true of image i; None means only the pairs
            themselves (plain CLIP). The diagonal is taken as True.
        positives: "own": each image's positive is its own caption and the other true captions are left
            out of both softmax denominators (false negatives dropped); "all_true": every true caption
            is a positive, with the target mass spread evenly over them (multi-positive InfoNCE).

    Returns:
        Scalar loss, the mean of the image->text and text->image cross-entropies.
    """
    if positives not in ("own", "all_true"):
        raise ValueError(f"positives: expected 'own' or 'all_true', got {positives!r}")
    logits = logit_scale * image_feats @ text_feats.T  # (B, B)
    eye = torch.eye(len(logits), dtype=torch.bool, device=logits.device)
    if true_pairs is None:
        true_pairs = eye
    true_pairs = true_pairs.to(logits.device) | eye
    if positives == "own":
        logits = logits.masked_fill(true_pairs & ~eye, float("-inf"))
        target = torch.arange(len(logits), device=logits.device)
        return 0.5 * (nn.functional.cross_entropy(logits, target)
                      + nn.functional.cross_entropy(logits.T, target))
    weights = true_pairs.float()
    image_to_text = weights / weights.sum(dim=1, keepdim=True)
    text_to_image = weights.T / weights.T.sum(dim=1, keepdim=True)
    return 0.5 * (nn.functional.cross_entropy(logits, image_to_text)
                  + nn.functional.cross_entropy(logits.T, text_to_image))


def class_caption_loss(image_feats: torch.Tensor, class_feats: torch.Tensor, logit_scale: torch.Tensor,
                       labels: torch.Tensor) -> torch.Tensor:
    """InfoNCE of each image against the captions of every class, its own class's caption the positive.

    This is the image-to-text half of CLIP's loss with the candidate captions being one per class
    (the form of zero-shot classification), as in UniCL (Yang et al., CVPR 2022): every image gets a
    negative for every other class in every step, however the batch happens to be drawn.

    Args:
        image_feats: (B, E) L2-normalised image embeddings.
        class_feats: (K, E) L2-normalised embeddings of one caption per class.
        logit_scale: scalar inverse temperature (already exponentiated).
        labels: (B,) class index of each image.
    """
    return nn.functional.cross_entropy(logit_scale * image_feats @ class_feats.T, labels)


def probe_head_loss(heads: nn.ModuleDict, image_out: torch.Tensor, objects: torch.Tensor,
                    backgrounds: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the auxiliary linear object and background heads on the image embedding.

    At initialisation the text tower barely tells one object word from another, so the contrastive terms alone
    give the image tower almost no shape signal; a random linear head gives it a full-strength one from the
    first step. The heads are trained alongside and thrown away.

    Args:
        heads: ``{"object": Linear(E, n_objects), "background": Linear(E, n_backgrounds)}``.
        image_out: (B, E) image embeddings before normalisation (any float dtype; the heads see fp32).
        objects: (B,) object class index of each image.
        backgrounds: (B,) background class index of each image.
    """
    return 0.5 * (nn.functional.cross_entropy(heads["object"](image_out.float()), objects)
                  + nn.functional.cross_entropy(heads["background"](image_out.float()), backgrounds))
