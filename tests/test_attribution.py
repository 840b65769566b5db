"""LeGrad and gradient-weighted relevance pinned by value: hand-made toys, a tower computed block by block here
(attention from q and k, gradients by autograd), and torchcam's own LeGrad on a CoOp tower."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dapt_core.analysis import analyze
from dapt_core.attention.attribution import ATTENTION_METHODS
from dapt_core.attention.capture import (
    AttentionCaptureError,
    TokenLayout,
    attention_forward,
    capture_attention,
    token_layout,
    tower_head,
)
from dapt_core.attention.cam import CAM_METHODS, compute_cams
from dapt_core.attention.descriptions import DEFAULT_METHOD, METHOD_DESCRIPTIONS
from dapt_core.attention.legrad import aggregate_layers, legrad_scores
from dapt_core.attention.relevance import relevance_scores, rollout
from dapt_core.learners import build_learner

CLASSES = ["dog", "cat", "fish"]


@pytest.fixture(scope="module")
def learners(tiny_backbone):
    torch.manual_seed(3)
    coop = build_learner("coop", tiny_backbone, CLASSES)
    maple = build_learner("maple", tiny_backbone, CLASSES)
    with torch.no_grad():  # MaPLe's deeper prompts start near zero; make them matter
        for p in maple.compound_prompts_text:
            p.normal_(0, 1)
    return {"coop": coop, "maple": maple}


def _images(seed: int, n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- hand-made toys -----------------------------------------------------------------------------------------

def test_rollout_known_answer_with_head_mean_and_relu():
    """Tokens [CLS, p1, p2]; G = 1 in head 0 and -1 in head 1 (dropped by the ReLU), so each block adds A_0 / 2.
    Block 0: CLS looks only at p1. Block 1: CLS looks only at itself. R0 = I + A/2, R1 = R0 + (A'/2) R0, so the
    class row is e0 + e1/2 + (e0 + e1/2)/2 = 1.5 e0 + 0.75 e1."""
    layout = TokenLayout(grid=(1, 2))
    first = torch.zeros(1, 2, 3, 3)
    first[0, :, 0, 1] = 1.0
    second = torch.zeros(1, 2, 3, 3)
    second[0, :, 0, 0] = 1.0
    grad = torch.ones(1, 2, 3, 3)
    grad[0, 1] = -1.0
    relevance = rollout([first, second], [grad, grad], layout)
    torch.testing.assert_close(relevance[0, 0], torch.tensor([1.5, 0.75, 0.0]))


def test_rollout_resets_prompt_rows_before_the_blocks_that_replace_them():
    """Tokens [CLS, p1, p2, prompt]. Block 0: the prompt looks at p2. The prompt is replaced before block 1,
    where CLS looks at the prompt: p2 must get nothing (without the reset it would get 1)."""
    first = torch.zeros(1, 1, 4, 4)
    first[0, 0, 3, 2] = 1.0
    second = torch.zeros(1, 1, 4, 4)
    second[0, 0, 0, 3] = 1.0
    ones = [torch.ones(1, 1, 4, 4)] * 2
    replaced = rollout([first, second], ones, TokenLayout(grid=(1, 2), n_prompts=1, prompt_blocks=(1,)))
    kept = rollout([first, second], ones, TokenLayout(grid=(1, 2), n_prompts=1))
    torch.testing.assert_close(replaced[0, 0], torch.tensor([1.0, 0.0, 0.0, 1.0]))
    torch.testing.assert_close(kept[0, 0], torch.tensor([1.0, 0.0, 1.0, 1.0]))


def test_legrad_aggregation_known_answer():
    """Tokens [CLS, p1, p2, prompt], two heads, two layers: mean over heads and rows of the positive part,
    patch columns only, summed over layers."""
    layout = TokenLayout(grid=(1, 2), n_prompts=1)
    first = torch.zeros(1, 2, 4, 4)
    first[0, 0, :, 1] = 2.0  # every row of head 0 -> p1: mean over 2 heads x 4 rows = 1.0
    first[0, 1, :, 2] = -5.0  # negative: dropped
    first[0, :, :, 3] = 9.0  # prompt column: dropped
    second = torch.zeros(1, 2, 4, 4)
    second[0, 1, 0, 2] = 8.0  # one row of one head -> p2: 8 / 8 = 1.0
    torch.testing.assert_close(aggregate_layers([first, second], layout), torch.tensor([[1.0, 1.0]]))


# --- the tower, block by block, in this file ---------------------------------------------------------------

def _manual_tower(learner, images):
    """The image path by hand: attention = softmax(q k^T / sqrt(d)) from the packed projection; MaPLe's prompts
    appended after the patches before ln_pre and overwritten before blocks 1..J-1. Returns per-block attention
    (in the graph), per-block tokens and the normalised image features."""
    visual = learner.backbone.visual
    x = visual.conv1(images).flatten(2).transpose(1, 2)  # (B, g*g, W)
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding
    n_base = x.shape[1]
    deep = []
    if learner.n_visual_prompts:
        first, deep = learner.visual_prompts()
        x = torch.cat([x, first.expand(x.shape[0], -1, -1)], dim=1)
    x = visual.ln_pre(x)
    attentions, outputs = [], []
    for i, block in enumerate(visual.transformer.resblocks):
        if 1 <= i <= len(deep):
            x = torch.cat([x[:, :n_base], deep[i - 1].expand(x.shape[0], -1, -1)], dim=1)
        batch, length, width = x.shape
        heads = block.attn.num_heads
        q, k, v = F.linear(block.ln_1(x), block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(batch, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))
        attention = (q @ k.transpose(-1, -2) / math.sqrt(width // heads)).softmax(dim=-1)
        mixed = (attention @ v).transpose(1, 2).reshape(batch, length, width)
        x = x + block.attn.out_proj(mixed)
        x = x + block.mlp(block.ln_2(x))
        attentions.append(attention)
        outputs.append(x)
    return attentions, outputs, _manual_head(visual, x)


def _manual_head(visual, tokens):
    return F.normalize(visual.ln_post(tokens[:, 0]) @ visual.proj, dim=-1)


def _text(learner):
    with torch.no_grad():
        return learner.text_features()


@pytest.mark.parametrize("kind", ["coop", "maple"])
def test_capture_records_the_towers_own_attention_and_features(learners, kind):
    learner = learners[kind]
    images = _images(1).requires_grad_(True)
    attentions, outputs, features = _manual_tower(learner, images)
    forward = attention_forward(learner, images)
    assert len(forward.attentions) == len(attentions) == 2
    for ours, theirs in zip(forward.attentions, attentions):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(forward.image_features, features, atol=1e-5, rtol=1e-4)
    # the last block's tokens through the tower head are the learner's own image features
    torch.testing.assert_close(tower_head(learner.backbone.visual, forward.outputs[-1]),
                               learner.encode_image(images), atol=1e-6, rtol=1e-5)
    expected = TokenLayout((4, 4), 2, (1,)) if kind == "maple" else TokenLayout((4, 4))
    assert token_layout(learner) == expected


@pytest.mark.parametrize("kind", ["coop", "maple"])
@pytest.mark.parametrize("targets", [[0, 2], None])
def test_legrad_equals_the_step_by_step_computation(learners, kind, targets):
    learner = learners[kind]
    text = _text(learner)
    images = _images(2).requires_grad_(True)
    attentions, outputs, features = _manual_tower(learner, images)
    logits = learner.logits(features, text)
    chosen = logits.argmax(-1).tolist() if targets is None else targets
    expected = torch.zeros(2, 16)
    for attention, tokens in zip(attentions, outputs):
        layer_logits = learner.logits(_manual_head(learner.backbone.visual, tokens), text)
        score = layer_logits[0, chosen[0]] + layer_logits[1, chosen[1]]
        (grad,) = torch.autograd.grad(score, attention, retain_graph=True)
        expected += grad.clamp(min=0).mean(dim=(1, 2))[:, 1:17]
    scores, got_logits, got_targets = legrad_scores(learner, attention_forward(learner, images), text, targets)
    assert got_targets == chosen
    torch.testing.assert_close(got_logits, logits.detach(), atol=1e-4, rtol=1e-4)
    assert float(expected.max()) > 0
    torch.testing.assert_close(scores, expected, atol=1e-6 * float(expected.max()), rtol=1e-3)


@pytest.mark.parametrize("kind", ["coop", "maple"])
def test_relevance_equals_the_step_by_step_computation(learners, kind):
    learner = learners[kind]
    text = _text(learner)
    images = _images(3).requires_grad_(True)
    targets = [1, 0]
    attentions, _, features = _manual_tower(learner, images)
    logits = learner.logits(features, text)
    grads = torch.autograd.grad(logits[0, 1] + logits[1, 0], attentions)
    expected = []
    for b in range(2):
        relevance = torch.eye(attentions[0].shape[-1])
        for block, (attention, grad) in enumerate(zip(attentions, grads)):
            if kind == "maple" and block == 1:  # MaPLe's deep prompt replaces rows 17, 18 before block 1
                relevance[17:] = torch.eye(19)[17:]
            relevance = relevance + (grad[b] * attention[b].detach()).clamp(min=0).mean(dim=0) @ relevance
        expected.append(relevance[0, 1:17])
    expected = torch.stack(expected)
    scores, _, _ = relevance_scores(learner, attention_forward(learner, images), text, targets)
    torch.testing.assert_close(scores, expected, atol=1e-6 * float(expected.max()), rtol=1e-3)


class _BlockView(nn.Module):
    """torchcam's LeGrad looks for a ``self_attention`` child on each hooked block; open_clip calls it ``attn``."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.self_attention = block.attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _CoOpForTorchcam(nn.Module):
    def __init__(self, learner, text: torch.Tensor) -> None:
        super().__init__()
        self.learner = learner
        self.views = nn.ModuleList(_BlockView(b) for b in learner.backbone.visual.transformer.resblocks)
        self.text = text

    def scores(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.learner.logits(_manual_head(self.learner.backbone.visual, tokens), self.text)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.learner.backbone.visual._embeds(images)
        for view in self.views:
            x = view(x)
        return self.scores(x)


def test_legrad_equals_torchcam_on_a_coop_tower(learners):
    from torchcam.methods import LeGrad

    learner = learners["coop"]
    text = _text(learner)
    images = _images(4)
    model = _CoOpForTorchcam(learner, text)
    with LeGrad(model, list(model.views), score_projection=model.scores, grid_shape=(4, 4)) as extractor:
        model(images)
        (theirs,) = extractor([2, 1])
    ours, _, _ = legrad_scores(learner, attention_forward(learner, images), text, [2, 1])
    ours = ours.reshape(2, 4, 4)
    ours = ours - ours.amin(dim=(1, 2), keepdim=True)
    ours = ours / ours.amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


# --- behaviour around the maps ------------------------------------------------------------------------------

def _hooks(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in module.modules())


@pytest.mark.parametrize("kind", ["coop", "maple"])
@pytest.mark.parametrize("method", sorted(ATTENTION_METHODS))
def test_maps_for_both_learners_leave_no_hook_and_no_grad(learners, tiny_backbone, kind, method):
    learner = learners[kind]
    cams = compute_cams(learner, _images(5), [0, 2], method=method)
    assert cams.shape == (2, 32, 32) and cams.dtype == np.float32
    assert cams.min(axis=(1, 2)).tolist() == [0.0, 0.0]
    np.testing.assert_allclose(cams.max(axis=(1, 2)), 1.0, atol=1e-4)
    assert _hooks(tiny_backbone.model) == 0
    assert all(p.grad is None for p in learner.parameters())


def test_capture_hooks_live_only_inside_the_block_even_on_error(tiny_backbone):
    visual = tiny_backbone.visual
    with pytest.raises(RuntimeError, match="inside"):
        with capture_attention(visual) as record:
            assert _hooks(visual) == 3 * len(visual.transformer.resblocks)
            visual(torch.zeros(1, 3, 32, 32))
            assert len(record.attentions) == len(record.outputs) == 2
            raise RuntimeError("inside")
    assert _hooks(visual) == 0


def test_capture_refuses_a_tower_without_multihead_attention():
    tower = nn.Module()
    tower.transformer = nn.Module()
    block = nn.Module()
    block.attn = nn.Linear(4, 4)
    tower.transformer.resblocks = nn.ModuleList([block])
    with pytest.raises(AttentionCaptureError, match="block 0 has no nn.MultiheadAttention"):
        with capture_attention(tower):
            pass
    assert _hooks(tower) == 0


@pytest.mark.parametrize("method", sorted(ATTENTION_METHODS))
def test_each_image_of_a_batch_gets_its_own_map(learners, method):
    learner = learners["maple"]
    images = _images(6)
    both = compute_cams(learner, images, [0, 1], method=method)
    alone = compute_cams(learner, images[1:], [1], method=method)
    np.testing.assert_allclose(both[1], alone[0], atol=1e-5)
    assert not np.allclose(both[0], both[1], atol=1e-3)


@pytest.mark.parametrize("method", sorted(ATTENTION_METHODS))
def test_maps_under_no_grad_equal_maps_with_grad(learners, method):
    images = _images(10, n=1)
    with torch.no_grad():
        quiet = compute_cams(learners["maple"], images, [2], method=method)
    np.testing.assert_allclose(quiet, compute_cams(learners["maple"], images, [2], method=method), atol=1e-6)


@pytest.mark.parametrize("method", sorted(ATTENTION_METHODS))
def test_the_map_depends_on_the_target_class(learners, method):
    learner = learners["coop"]
    images = _images(7, n=1)
    first = compute_cams(learner, images, [0], method=method)
    second = compute_cams(learner, images, [1], method=method)
    assert np.abs(first - second).max() > 1e-2


@pytest.mark.parametrize("method", sorted(ATTENTION_METHODS))
def test_analyze_serves_attention_methods_like_compute_cams(learners, tiny_backbone, method):
    """On an S x S image nothing is resized: analyze's maps (CoOp sets on one shared forward, MaPLe its own)
    are compute_cams' maps."""
    rng = np.random.default_rng(8)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    other = build_learner("coop", tiny_backbone, CLASSES, n_ctx=4)
    sets = [learners["coop"], learners["maple"], other]
    result = analyze(image, sets, cam_method=method, segmenter=None, target="cat")
    assert result.shared_forward and result.cam_method == method
    mean, std = np.asarray(tiny_backbone.mean), np.asarray(tiny_backbone.std)
    batch = torch.from_numpy(((image / 255.0 - mean) / std).astype(np.float32).transpose(2, 0, 1))[None]
    for learner, found in zip(sets, result.results):
        np.testing.assert_allclose(found.cam, compute_cams(learner, batch, [1], method=method)[0], atol=1e-5)
    assert _hooks(tiny_backbone.model) == 0


def test_registry_and_descriptions_agree():
    assert set(METHOD_DESCRIPTIONS) == set(CAM_METHODS)
    assert {"legrad", "relevance"} <= set(CAM_METHODS)
    assert DEFAULT_METHOD == "gradcam"
    for name, line in METHOD_DESCRIPTIONS.items():
        assert line.strip() and "\n" not in line, name


def test_attention_methods_refuse_a_target_layer_and_unknown_names(learners, tiny_backbone):
    layer = tiny_backbone.visual.transformer.resblocks[-1].ln_1
    with pytest.raises(ValueError, match="legrad reads the attention of every vision block"):
        compute_cams(learners["coop"], _images(9, n=1), [0], method="legrad", target_layer=layer)
    with pytest.raises(ValueError, match="unknown CAM method 'rollout'.*legrad, relevance"):
        compute_cams(learners["coop"], _images(9, n=1), [0], method="rollout")
    with pytest.raises(ValueError, match="target class out of range"):
        compute_cams(learners["coop"], _images(9, n=1), [7], method="relevance")
    assert _hooks(tiny_backbone.model) == 0
