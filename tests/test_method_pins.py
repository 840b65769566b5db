"""Pins of DAPT's wiring by value: each test fails when one plausible bug is planted in the method.

- The objective on a fake learner with known features: which view plays which role in each term, what each
  term's gradient reaches (the foreground view detached, the background view not, the triplet's anchor
  attached and its positive and negative detached), which background prompt texts each learner encodes.
- MaPLe against the step-by-step official forward of tests/test_background_official.py (deep prompts at the
  right positions of the right layers of both towers), and the text-to-vision coupling by gradients.
- CoOp's background prompts behind the learned context, also for a class-specific context.
- The Grad-CAM cue against a Grad-CAM written by hand (the class asked for, the last block's ``ln_1``, the
  patch tokens only).
"""

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dapt_core.attention.cam import compute_cams
from dapt_core.learners import PromptError, build_learner
from dapt_core.objective import DaptConfig, background_text_features, dapt_losses
from test_background_official import (  # deep_backbone is a fixture: imported so that pytest finds it here
    CLASSES, deep_backbone, maple, official_image_features, official_text_features,  # noqa: F401
)

WORDS = ("sky", "road", "sea")
SCALE = 4.0


class FakeLearner(nn.Module):
    """A learner with known features: image ``normalize(flat(x) @ V)``, class text ``normalize(T)``,
    background text ``normalize(W)`` (one row per background word); records the background prompt texts."""

    def __init__(self, in_dim: int, in_context: bool, n_classes: int = 3, dim: int = 5) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.V = nn.Parameter(torch.randn(in_dim, dim, generator=gen))
        self.T = nn.Parameter(torch.randn(n_classes, dim, generator=gen))
        self.W = nn.Parameter(torch.randn(len(WORDS), dim, generator=gen))
        self.backbone = SimpleNamespace(logit_scale=torch.tensor(SCALE))
        self.background_in_context = in_context
        self.prompts: list[tuple[str, list[str]]] = []

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(images.flatten(1) @ self.V, dim=-1)

    def text_features(self) -> torch.Tensor:
        return F.normalize(self.T, dim=-1)

    def prompt_text_features(self, texts: list[str]) -> torch.Tensor:
        self.prompts.append(("context", list(texts)))
        return F.normalize(self.W, dim=-1)

    def plain_prompt_features(self, texts: list[str]) -> torch.Tensor:
        self.prompts.append(("plain", list(texts)))
        return F.normalize(self.W, dim=-1)


def fake_batch():
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 4, 4, generator=gen)
    masks = torch.zeros(4, 1, 4, 4)
    masks[..., :, :2] = 1.0  # left half is the object
    return images, masks, torch.tensor([0, 2, 1, 2])


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.logsumexp(dim=1) - logits[torch.arange(len(labels)), labels]).mean()


def hand_terms(learner: FakeLearner, images, masks, labels, margin: float, detach_background: bool = False):
    """Every term written out from the method's definition, unweighted."""
    full = learner.encode_image(images)
    fg = learner.encode_image(images * masks)
    bg = learner.encode_image(images * (1 - masks))
    text, words = learner.text_features(), F.normalize(learner.W, dim=-1)
    pull = (full - fg.detach()).norm(dim=1)
    push = (full - bg.detach()).norm(dim=1)
    bg_view = bg.detach() if detach_background else bg
    bg_logits = SCALE * bg_view @ words.t()
    return {"ce": cross_entropy(SCALE * full @ text.t(), labels),
            "triplet": torch.relu(pull - push + margin).mean(),
            "foreground": cross_entropy(SCALE * fg.detach() @ text.t(), labels),
            "background": cross_entropy(bg_logits, bg_logits.detach().argmax(dim=1)),
            "swapped_triplet": torch.relu(push - pull + margin).mean(),
            "swapped_foreground": cross_entropy(SCALE * bg.detach() @ text.t(), labels),
            "swapped_background": cross_entropy(SCALE * fg @ words.t(), (SCALE * fg @ words.t()).argmax(dim=1))}


def grads_of(learner: nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    learner.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in learner.named_parameters()}


@pytest.mark.parametrize("in_context", [True, False], ids=["coop-like", "maple-like"])
def test_each_term_uses_its_view_by_value(in_context):
    images, masks, labels = fake_batch()
    learner = FakeLearner(images[0].numel(), in_context)
    cfg = DaptConfig(cue="mask", schedule="joint", background_words=WORDS)
    ours = dapt_losses(learner, images, masks, labels, 0, cfg)
    expected = hand_terms(learner, images, masks, labels, cfg.margin)
    for term in ("ce", "triplet", "foreground", "background"):
        torch.testing.assert_close(ours[term], expected[term], rtol=1e-5, atol=1e-5, msg=term)
        # the swap is visible on these features, so a role swap cannot pass the comparison above
        if term != "ce":
            assert abs(float((expected[f"swapped_{term}"] - expected[term]).detach())) > 1e-2, term
    # the background prompts each learner encodes, and through which path
    texts = [f"{w}." for w in WORDS] if in_context else [f"a clean origami {w}." for w in WORDS]
    assert learner.prompts == [("context" if in_context else "plain", texts)]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])  # plain: every view carries a graph
@pytest.mark.parametrize("detach_background", [False, True])
def test_each_term_reaches_exactly_its_parameters(detach_background, fast):
    images, masks, labels = fake_batch()
    learner = FakeLearner(images[0].numel(), in_context=True)
    cfg = DaptConfig(cue="mask", schedule="joint", background_words=WORDS, detach_background_view=detach_background)
    ours = dapt_losses(learner, images, masks, labels, 0, cfg, fast=fast)
    expected = hand_terms(learner, images, masks, labels, cfg.margin, detach_background)
    zero = {"triplet": {"T", "W"}, "foreground": {"V", "W"}, "ce": {"W"},
            "background": {"T", "V"} if detach_background else {"T"}}
    for term, untouched in zero.items():
        got, want = grads_of(learner, ours[term]), grads_of(learner, expected[term])
        for name in ("V", "T", "W"):
            torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=f"{term} -> {name}")
            assert (float(want[name].abs().sum()) == 0.0) == (name in untouched), f"{term} -> {name}"


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_the_triplet_gradient_flows_through_the_anchor_only(fast):
    images, masks, labels = fake_batch()
    learner = FakeLearner(images[0].numel(), in_context=True)
    cfg = DaptConfig(cue="mask", schedule="joint", background_words=WORDS)
    got = grads_of(learner, dapt_losses(learner, images, masks, labels, 0, cfg, fast=fast)["triplet"])["V"]
    full = learner.encode_image(images)
    fg, bg = learner.encode_image(images * masks), learner.encode_image(images * (1 - masks))

    def v_grad(anchor, positive, negative):
        loss = torch.relu((anchor - positive).norm(dim=1) - (anchor - negative).norm(dim=1) + cfg.margin).mean()
        return grads_of(learner, loss)["V"]

    torch.testing.assert_close(got, v_grad(full, fg.detach(), bg.detach()), rtol=1e-4, atol=1e-6)
    # what the bugs would give instead: an anchor detached, or views that are not
    assert (got - v_grad(full, fg, bg)).abs().max() > 1e-3
    assert got.abs().max() > 1e-3


@pytest.mark.parametrize("schedule,epoch,epochs,early", [("official", 6, 10, True), ("official", 7, 10, False),
                                                          ("scaled", 3, 5, True), ("scaled", 4, 5, False)])
def test_the_schedule_weighs_the_terms_it_computes(schedule, epoch, epochs, early):
    images, masks, labels = fake_batch()
    learner = FakeLearner(images[0].numel(), in_context=False)
    cfg = DaptConfig(cue="gradcam", schedule=schedule, background_words=WORDS)
    ours = dapt_losses(learner, images, masks, labels, epoch, cfg, epochs=epochs)
    t = hand_terms(learner, images, masks, labels, cfg.margin)
    if early:
        assert set(ours) == {"ce", "triplet", "total"}
        expected = t["ce"] + cfg.triplet_weight * t["triplet"]
    else:
        assert set(ours) == {"ce", "foreground", "background", "total"}
        expected = t["ce"] + cfg.foreground_weight * t["foreground"] + cfg.background_weight * t["background"]
    torch.testing.assert_close(ours["total"], expected, rtol=1e-5, atol=1e-5)


# --- MaPLe, step by step over open_clip's blocks -----------------------------------------------------------

@pytest.mark.parametrize("depth", [2, 3])
def test_maple_equals_the_official_forward_in_both_towers(deep_backbone, depth):
    learner = maple(deep_backbone, seed=11, depth=depth)
    torch.manual_seed(12)
    images = torch.randn(2, 3, deep_backbone.image_size, deep_backbone.image_size)
    with torch.no_grad():
        text, _ = official_text_features(learner, ("sky",))
        torch.testing.assert_close(learner.text_features(), F.normalize(text, dim=-1), rtol=1e-5, atol=1e-6)
        # a text block that hooks watch (attention capture) makes the prompts run one by one, without the
        # shared prefix: the deep prompts must land at positions 1..n_ctx there too
        handle = deep_backbone.model.transformer.resblocks[0].register_forward_hook(lambda *args: None)
        try:
            torch.testing.assert_close(learner.text_features(), F.normalize(text, dim=-1), rtol=1e-5, atol=1e-6)
        finally:
            handle.remove()
        image = official_image_features(learner, images)
        torch.testing.assert_close(learner.encode_image(images), F.normalize(image, dim=-1), rtol=1e-5, atol=1e-6)
        # each deep layer's prompts act on both towers, so a prompt left out or put elsewhere shows
        for layer in range(depth - 1):
            saved = learner.compound_prompts_text[layer].clone()
            learner.compound_prompts_text[layer].add_(torch.randn_like(saved))  # not a constant: LN removes those
            moved_text, moved_image = learner.text_features(), learner.encode_image(images)
            learner.compound_prompts_text[layer].copy_(saved)
            assert (moved_text - F.normalize(text, dim=-1)).abs().max() > 1e-3, layer
            assert (moved_image - F.normalize(image, dim=-1)).abs().max() > 1e-3, layer


def test_maple_visual_prompts_are_the_projections_of_the_text_prompts(deep_backbone):
    learner = maple(deep_backbone, seed=13)
    first, deep = learner.visual_prompts()
    torch.testing.assert_close(first, learner.ctx @ learner.proj.weight.t() + learner.proj.bias)
    assert len(deep) == len(learner.compound_prompts_text) == learner.cfg.depth - 1
    for p, layer, got in zip(learner.compound_prompts_text, learner.compound_prompt_projections, deep):
        torch.testing.assert_close(got, p @ layer.weight.t() + layer.bias)


def test_maple_couples_the_towers_through_the_text_prompts(deep_backbone):
    learner = maple(deep_backbone, seed=14)
    torch.manual_seed(15)
    images = torch.randn(2, 3, deep_backbone.image_size, deep_backbone.image_size)
    direction = torch.randn(deep_backbone.embed_dim)
    image_grads = grads_of(learner, (learner.encode_image(images) @ direction).sum())
    text_grads = grads_of(learner, (learner.text_features() @ direction).sum())
    visual = [n for n in image_grads if n.startswith(("proj.", "compound_prompt_projections."))]
    assert len(visual) == 2 + 2 * (learner.cfg.depth - 1)
    for name, grad in image_grads.items():  # every parameter moves the image features: ctx through proj
        assert grad.abs().sum() > 0, f"image features do not depend on {name}"
    for name, grad in text_grads.items():  # the projections are on the vision side only
        assert (grad.abs().sum() == 0) == (name in visual), name


# --- CoOp's background prompts -----------------------------------------------------------------------------

def test_coop_class_specific_background_prompts_use_the_mean_context(tiny_backbone):
    cfg = DaptConfig(cue="mask", background_words=WORDS)
    torch.manual_seed(16)
    specific = build_learner("coop", tiny_backbone, CLASSES, n_ctx=3, class_specific=True)
    shared = build_learner("coop", tiny_backbone, CLASSES, n_ctx=3)
    with torch.no_grad():
        specific.ctx.add_(torch.randn_like(specific.ctx))
        shared.ctx.copy_(specific.ctx.mean(dim=0))
        got = background_text_features(specific, cfg)
        torch.testing.assert_close(got, background_text_features(shared, cfg), rtol=1e-5, atol=1e-6)
        shared.ctx.copy_(specific.ctx[0])
        assert (got - background_text_features(shared, cfg)).abs().max() > 1e-3


# --- the Grad-CAM cue against Grad-CAM by hand ---------------------------------------------------------------

def hand_gradcam(learner, images: torch.Tensor, targets: list[int]) -> np.ndarray:
    """Grad-CAM at the last vision block's ln_1: channel weights = mean gradient of the target logit over the
    patch tokens, ReLU of the weighted sum, scaled to [0, 1], upsampled bilinearly, scaled again."""
    grid = learner.backbone.visual.grid_size
    seen = []
    handle = learner.backbone.visual.transformer.resblocks[-1].ln_1.register_forward_hook(
        lambda module, args, out: seen.append(out))
    try:
        with torch.no_grad():
            text = learner.text_features()
        # a leaf that needs a gradient: CoOp's image tower has no learnable parameter
        logits = learner.logits(learner.encode_image(images.clone().requires_grad_(True)), text)
    finally:
        handle.remove()
    tokens = seen[0]  # (B, L, W): CLS, patches, visual prompts
    score = logits[torch.arange(len(targets)), torch.tensor(targets)].sum()
    grads = torch.autograd.grad(score, tokens)[0]
    n = grid[0] * grid[1]
    acts, grads = tokens[:, 1:1 + n].detach(), grads[:, 1:1 + n]
    weights = grads.mean(dim=1, keepdim=True)  # (B, 1, W)
    cams = torch.relu((weights * acts).sum(dim=-1)).reshape(-1, *grid).numpy()
    size = images.shape[-1]
    out = []
    for cam in cams:
        cam = (cam - cam.min()) / (1e-7 + (cam - cam.min()).max())
        cam = cv2.resize(cam.astype(np.float32), (size, size))
        out.append((cam - cam.min()) / (1e-7 + (cam - cam.min()).max()))
    return np.stack(out)


@pytest.mark.parametrize("kind", ["coop", "maple"])
def test_the_cam_cue_is_gradcam_for_the_asked_class_at_ln1(deep_backbone, kind):
    torch.manual_seed(17)  # three blocks: the last is neither the first nor the second
    learner = maple(deep_backbone, seed=17) if kind == "maple" else build_learner(kind, deep_backbone, CLASSES)
    images = torch.randn(2, 3, deep_backbone.image_size, deep_backbone.image_size)
    for targets in ([0, 2], [1, 0]):
        np.testing.assert_allclose(compute_cams(learner, images, targets), hand_gradcam(learner, images, targets),
                                   atol=2e-4)
    # the class matters on these images, so a CAM taken for another class cannot pass
    assert np.abs(hand_gradcam(learner, images, [0, 2]) - hand_gradcam(learner, images, [1, 0])).max() > 0.05
    with torch.no_grad():  # no targets: each image's predicted class
        predicted = learner(images).argmax(dim=1).tolist()
    np.testing.assert_allclose(compute_cams(learner, images), hand_gradcam(learner, images, predicted), atol=2e-4)


def test_dapt_without_masks_is_refused():
    images, _, labels = fake_batch()
    learner = FakeLearner(images[0].numel(), in_context=True)
    with pytest.raises(ValueError, match="^DAPT needs a foreground mask for every image$"):
        dapt_losses(learner, images, None, labels, 0, DaptConfig(cue="mask", schedule="joint", background_words=WORDS))


def test_the_edges_of_the_schedule_and_the_prompt_length_say_what_is_wrong(tiny_backbone):
    from dapt_core.attention.cam import vit_reshape
    from dapt_core.objective import run_switch_epoch, scaled_switch_epoch

    with pytest.raises(ValueError, match="^a run needs at least one epoch, got 0$"):
        scaled_switch_epoch(0)
    with pytest.raises(ValueError, match="^the scaled DAPT schedule needs the run's number of epochs$"):
        run_switch_epoch(DaptConfig(cue="mask", schedule="scaled"), None)
    tokens = torch.arange(1 + 6, dtype=torch.float32).reshape(1, 7, 1)
    assert vit_reshape((2, 3))(tokens)[0, 0].flatten().tolist() == [1, 2, 3, 4, 5, 6]  # no prompt tokens by default
    with pytest.raises(ValueError, match=r"^expected 6 patch tokens, got 5$"):
        vit_reshape((2, 3), n_prompts=1)(tokens)
    # the longest prompt accepted leaves the last of the 77 positions empty (start, 74 words, end): one that
    # fills them all cannot be told from one the tokenizer cut
    learner = build_learner("maple", tiny_backbone, CLASSES, depth=2)
    assert learner.plain_prompt_features([" ".join(["sky"] * 74)]).shape == (1, tiny_backbone.embed_dim)
    with pytest.raises(PromptError, match="too long"):
        learner.plain_prompt_features([" ".join(["sky"] * 75)])
