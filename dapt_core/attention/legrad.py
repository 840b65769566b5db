"""LeGrad (Bousselham et al., 2024): how sensitive each layer's class score is to its attention map.

For every vision block ``l`` the block's output tokens go through the tower's own head (pooling, final
LayerNorm, projection; :func:`~dapt_core.attention.capture.tower_head`) to give a layer score ``s_l``, the
target class's logit against the prompt set's class text features (the last block's ``s_l`` is the model's
logit). The map is ``sum_l mean_{h, i} ReLU(d s_l / d A_l)[h, i, patches]``: positive gradients with respect
to the block's attention probabilities, averaged over heads and over every query row (class token, patches
and prompts), read at the patch keys, summed over blocks. The class token's and MaPLe's prompt tokens' key
columns are dropped.

``torchcam`` 0.5 ships LeGrad, but it does not fit open_clip's towers: it needs every hooked block to expose
its attention as a ``self_attention`` child (open_clip names it ``attn``), and it drops non-spatial tokens
only at the front of the sequence, so MaPLe's prompt tokens, appended after the patches, break its patch
grid. ``tests/test_attribution.py`` checks this implementation against ``torchcam``'s on a CoOp tower, where
an adapter makes the package fit.
"""

from __future__ import annotations

import torch

from dapt_core.attention.capture import AttentionForward, TokenLayout, target_scores, tower_head
from dapt_core.learners.base import PromptLearner


def legrad_scores(learner: PromptLearner, forward: AttentionForward, text_features: torch.Tensor,
                  targets: list[int] | None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """LeGrad patch scores of one prompt set on a captured forward.

    Args:
        learner: the prompt set; ``forward`` must serve it (its own forward, or a shared CoOp-kind one).
        forward: an :func:`~dapt_core.attention.capture.attention_forward` of the images.
        text_features: (C, E) the set's class text features, detached.
        targets: class index per image, or None for each image's predicted class.

    Returns:
        (B, g*g) non-negative patch scores (not normalised), (B, C) detached logits, the classes explained.
    """
    logits, chosen = target_scores(learner, forward.image_features, text_features, targets)
    index = torch.tensor(chosen, device=logits.device)[:, None]
    visual = learner.backbone.visual
    grads = []
    for attention, tokens in zip(forward.attentions, forward.outputs):
        layer_logits = learner.logits(tower_head(visual, tokens), text_features)  # (B, C)
        # images are independent, so the gradient of the sum is each image's own
        (grad,) = torch.autograd.grad(layer_logits.gather(1, index).sum(), attention, retain_graph=True)
        grads.append(grad)
    return aggregate_layers(grads, forward.layout), logits.detach(), chosen


def aggregate_layers(grads: list[torch.Tensor], layout: TokenLayout) -> torch.Tensor:
    """``sum_l mean_{h, i} ReLU(G_l)[:, h, i, patches]``: per-layer gradients (B, H, L, L) -> (B, g*g)."""
    total = torch.zeros(grads[0].shape[0], layout.n_patches, device=grads[0].device)
    for grad in grads:
        total += grad.clamp(min=0).mean(dim=(1, 2))[:, layout.patches].float()
    return total
