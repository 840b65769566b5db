"""Gradient-weighted attention relevance (Chefer, Gur and Wolf, ICCV 2021, "Generic Attention-model
Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers"), for the image tower.

With ``G_l = d y_t / d A_l``, the gradient of the target logit with respect to block ``l``'s attention
probabilities, relevance starts as the identity ``R = I`` (L, L) and each block adds
``R += mean_h((G_l * A_l)^+) @ R``; the map is the class token's row of ``R`` over the patch tokens.

MaPLe overwrites its visual prompt tokens with fresh prompts before blocks 1..J-1; a fresh token depends on
nothing that came before it, so its relevance rows are reset to the identity's at those blocks, and nothing
the image did earlier is credited through a token that no longer carries it. No maintained package computes
this rule for open_clip's towers (``grad-cam`` and ``torchcam`` are CAM and LeGrad only), hence this module.
"""

from __future__ import annotations

import torch

from dapt_core.attention.capture import AttentionForward, TokenLayout, target_scores
from dapt_core.learners.base import PromptLearner


def relevance_scores(learner: PromptLearner, forward: AttentionForward, text_features: torch.Tensor,
                     targets: list[int] | None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Relevance of each patch to one prompt set's target logit on a captured forward.

    Args:
        learner: the prompt set; ``forward`` must serve it.
        forward: an :func:`~dapt_core.attention.capture.attention_forward` of the images.
        text_features: (C, E) the set's class text features, detached.
        targets: class index per image, or None for each image's predicted class.

    Returns:
        (B, g*g) non-negative patch relevances (not normalised), (B, C) detached logits, the classes explained.
    """
    logits, chosen = target_scores(learner, forward.image_features, text_features, targets)
    index = torch.tensor(chosen, device=logits.device)[:, None]
    grads = torch.autograd.grad(logits.gather(1, index).sum(), forward.attentions, retain_graph=True)
    relevance = rollout([a.detach() for a in forward.attentions], list(grads), forward.layout)
    return relevance[:, 0, forward.layout.patches], logits.detach(), chosen


def rollout(attentions: list[torch.Tensor], grads: list[torch.Tensor], layout: TokenLayout) -> torch.Tensor:
    """The relevance rule over blocks: ``R = I``; per block ``R += mean_h((G * A)^+) @ R``, with the prompt
    rows reset to the identity's before the blocks that overwrite the prompt tokens.

    Args:
        attentions: per block (B, H, L, L) attention probabilities.
        grads: per block (B, H, L, L) gradients of the target logit with respect to them.
        layout: the token layout (which rows are prompts, before which blocks they are replaced).

    Returns:
        (B, L, L) relevance of every token (rows) to every input token (columns).
    """
    batch, length = attentions[0].shape[0], attentions[0].shape[-1]
    identity = torch.eye(length, device=attentions[0].device).expand(batch, length, length)
    relevance = identity.clone()
    for block, (attention, grad) in enumerate(zip(attentions, grads)):
        if block in layout.prompt_blocks:
            relevance[:, layout.prompts] = identity[:, layout.prompts]
        weighted = (grad * attention).clamp(min=0).mean(dim=1).float()  # (B, L, L)
        relevance = relevance + weighted @ relevance
    return relevance
