import numpy as np
import pytest
import torch

from dapt_core.attention.cam import CAM_METHODS, compute_cams, vit_reshape
from dapt_core.learners import build_learner


def test_vit_reshape_drops_class_and_prompt_tokens():
    grid = (2, 3)
    tokens = torch.arange(1 + 6 + 2, dtype=torch.float32).reshape(1, 9, 1).expand(1, 9, 4)
    out = vit_reshape(grid, n_prompts=2)(tokens)
    assert out.shape == (1, 4, 2, 3)
    assert out[0, 0].flatten().tolist() == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="patch tokens"):
        vit_reshape(grid, n_prompts=0)(tokens)


@pytest.mark.parametrize("kind", ["coop", "maple"])
@pytest.mark.parametrize("method", sorted(CAM_METHODS))
def test_cams_for_both_learners(tiny_backbone, kind, method):
    torch.manual_seed(0)
    learner = build_learner(kind, tiny_backbone, ["dog", "cat", "fish"])
    images = torch.randn(2, 3, 32, 32)
    cams = compute_cams(learner, images, [0, 2], method=method)
    assert cams.shape == (2, 32, 32) and cams.dtype == np.float32
    assert np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1 + 1e-6
    # no hook outlives the call
    layer = tiny_backbone.visual.transformer.resblocks[-1].ln_1
    assert not layer._forward_hooks
    assert all(p.grad is None for p in learner.parameters())
