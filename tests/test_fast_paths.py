"""The exact fast paths against the plain ones, by value: text features, logits, every loss term and every
learned tensor's gradient agree to fp32 rounding; and each fast path is the one that actually ran (the shared
text prefix, the sequence cut after the last end token, the views without autograd, the caches).

The plain paths: ``learner.fast_paths = False`` (every prompt's 77 positions, prompts tokenised and frozen
features encoded on every call) and ``dapt_losses(..., fast=False)`` (the three views in one call with autograd).
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dapt_core import encoders, objective
from dapt_core.encoders import end_positions, shared_prefix_length
from dapt_core.learners import base as learner_base
from dapt_core.learners import build_learner
from dapt_core.objective import DaptConfig, background_text_features, dapt_losses

CLASSES = ["dog", "cat", "red car", "hot air balloon over a lake", "x"]
LEARNERS = [("coop", {}), ("coop", {"ctx_init": "a photo of a"}), ("coop", {"n_ctx": 3, "class_specific": True}),
            ("maple", {})]


@pytest.fixture(scope="module")
def deep_backbone(tiny_variant):
    """A tiny random CLIP like tiny-vit with three blocks per tower (room for two deep MaPLe layers)."""
    def deeper(cfg):
        cfg["vision_cfg"]["layers"] = cfg["text_cfg"]["layers"] = 3
    return tiny_variant("tiny-vit-fast", deeper)


def make_learner(backbone, kind, options, seed=0):
    torch.manual_seed(seed)
    options = {"depth": 3, **options} if kind == "maple" else options
    learner = build_learner(kind, backbone, CLASSES, **options)
    with torch.no_grad():  # learned tensors away from their start, so that every one of them matters
        for p in learner.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return learner


def grads(learner, loss):
    learner.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}


def assert_same_grads(ours, theirs, tolerance=1e-5):
    assert set(ours) == set(theirs) and theirs
    for name in theirs:
        error = float((ours[name] - theirs[name]).norm() / theirs[name].norm())
        assert error < tolerance, f"{name}: relative gradient error {error:.2e}"


def batch(backbone, seed=0, n=4):
    torch.manual_seed(seed)
    size = backbone.image_size
    images = torch.randn(n, 3, size, size)
    masks = torch.zeros(n, 1, size, size)
    masks[..., 4:20, 8:28] = 1
    return images, masks, torch.arange(n) % len(CLASSES)


@pytest.mark.parametrize("kind,options", LEARNERS)
def test_fast_text_features_and_gradients_equal_the_plain_path(deep_backbone, kind, options):
    learner = make_learner(deep_backbone, kind, options)
    weights = torch.randn(len(CLASSES), deep_backbone.embed_dim)
    results = {}
    for fast in (True, False):
        learner.fast_paths = fast
        features = learner.text_features()
        results[fast] = (features.detach(), grads(learner, (features * weights).sum()))
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-5, atol=1e-6)
    assert_same_grads(results[True][1], results[False][1])
    assert "ctx" in results[True][1]


@pytest.mark.parametrize("kind,options", LEARNERS)
def test_fast_logits_equal_the_plain_path(deep_backbone, kind, options):
    learner = make_learner(deep_backbone, kind, options)
    images, _, _ = batch(deep_backbone, 1)
    with torch.no_grad():
        fast = learner(images)
        learner.fast_paths = False
        plain = learner(images)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


def count_calls(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


@pytest.mark.parametrize("kind,options,prefix", [("coop", {"n_ctx": 4}, 5), ("maple", {}, 5),
                                                  ("coop", {"n_ctx": 3, "class_specific": True}, 0)])
def test_the_shared_prefix_runs_once_for_every_prompt(deep_backbone, monkeypatch, kind, options, prefix):
    """CoOp: [SOS] + 4 shared context vectors; MaPLe: [SOS] ctx ctx "of a"; a class-specific context shares
    only [SOS], too little to share (the cut sequence runs as it is)."""
    learner = make_learner(deep_backbone, kind, options)
    calls = count_calls(monkeypatch, encoders, "_shared_prefix_block")
    learner.text_features()
    assert len(calls) == (3 if prefix else 0)  # once per text block when shared
    if prefix:
        block, flat, n, shared, _ = calls[0]
        cut = int(learner.class_tokens.argmax(dim=-1).max()) + 1
        assert (n, shared) == (len(CLASSES), prefix)
        assert flat.shape[0] == prefix + len(CLASSES) * (cut - prefix)


def test_the_sequence_stops_after_the_last_end_token(tiny_backbone, monkeypatch):
    learner = make_learner(tiny_backbone, "coop", {"n_ctx": 3, "class_specific": True})
    lengths = []
    original = encoders._run_blocks
    monkeypatch.setattr(encoders, "_run_blocks",
                        lambda t, x, *a, **k: lengths.append(x.shape[1]) or original(t, x, *a, **k))
    learner.text_features()
    learner.fast_paths = False
    learner.text_features()
    ends = learner.class_tokens.argmax(dim=-1)
    assert lengths == [int(ends.max()) + 1, learner.class_tokens.shape[1]]


def test_shared_prefix_length_by_value():
    rows = torch.zeros(3, 6, 2)
    rows[1, 3] = 1.0  # row 1 differs from position 3 on
    assert shared_prefix_length(rows, torch.tensor([5, 5, 4])) == 3
    assert shared_prefix_length(rows, torch.tensor([5, 2, 4])) == 2  # every end token stays its row's own
    assert shared_prefix_length(torch.zeros(2, 6, 2), torch.tensor([4, 5])) == 4  # identical rows


def test_shared_prefix_block_equals_open_clips_block(deep_backbone):
    """One block on flat [prefix, suffixes] states against the block on the full (N, P + S) batch."""
    model = deep_backbone.model
    block, length, prefix, n = model.transformer.resblocks[1], 9, 4, 3
    torch.manual_seed(2)
    x = torch.randn(n, length, deep_backbone.text_width)
    x[:, :prefix] = x[:1, :prefix]
    expected = block(x, attn_mask=model.attn_mask[:length, :length])
    flat = torch.cat([x[0, :prefix], x[:, prefix:].reshape(-1, x.shape[-1])])
    got = encoders._shared_prefix_block(block, flat, n, prefix, model.attn_mask[:length, :length])
    torch.testing.assert_close(got[:prefix], expected[0, :prefix], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[prefix:].reshape(n, -1, x.shape[-1]), expected[:, prefix:], rtol=1e-5,
                               atol=1e-6)


def test_the_fast_path_needs_a_causal_tower_with_end_token_pooling(tiny_backbone):
    model, tokens = tiny_backbone.model, tiny_backbone.tokenize(["a dog.", "a red car."])
    assert end_positions(model, tokens).tolist() == [4, 5]
    full = torch.zeros_like(model.attn_mask)
    for mask, pool in ((None, "argmax"), (full, "argmax"), (model.attn_mask, "first"), (model.attn_mask, "last")):
        fake = SimpleNamespace(attn_mask=mask, transformer=model.transformer, text_pool_type=pool)
        assert end_positions(fake, tokens) is None


def view_calls(monkeypatch, learner):
    """(rows, grad enabled) of every image encoder call."""
    calls = []
    original = learner.encode_image

    def spy(images):
        calls.append((images.shape[0], torch.is_grad_enabled()))
        return original(images)

    monkeypatch.setattr(learner, "encode_image", spy)
    return calls


CASES = [("coop", {}, "joint", 0, False), ("coop", {"ctx_init": "a photo of a"}, "official", 7, False),
         ("maple", {}, "joint", 0, False), ("maple", {}, "joint", 0, True), ("maple", {}, "official", 0, False),
         ("maple", {}, "official", 7, False), ("maple", {}, "official", 7, True)]


@pytest.mark.parametrize("kind,options,schedule,epoch,detach", CASES)
def test_fast_dapt_losses_and_gradients_equal_the_plain_path(deep_backbone, kind, options, schedule, epoch,
                                                              detach):
    learner = make_learner(deep_backbone, kind, options, seed=3)
    images, masks, labels = batch(deep_backbone, 3)
    cfg = DaptConfig(cue="mask", schedule=schedule, detach_background_view=detach)
    results = {}
    for fast in (True, False):
        learner.fast_paths = fast
        terms = dapt_losses(learner, images, masks, labels, epoch, cfg, epochs=10, fast=fast)
        results[fast] = ({k: v.detach() for k, v in terms.items()}, grads(learner, terms["total"]))
    assert set(results[True][0]) == set(results[False][0])
    for name, value in results[False][0].items():
        torch.testing.assert_close(results[True][0][name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert_same_grads(results[True][1], results[False][1])


@pytest.mark.parametrize("kind,schedule,epoch,detach,expected", [
    ("maple", "joint", 0, False, [(8, True), (4, False)]),  # background view trains: full + bg with a graph
    ("maple", "joint", 0, True, [(4, True), (8, False)]),  # background view detached: only the full image
    ("maple", "official", 0, False, [(4, True), (8, False)]),  # triplet phase: both views detached
    ("coop", "joint", 0, False, [(12, False)]),  # a frozen image side: the three views in one call, no graph
    ("coop", "official", 7, False, [(12, False)]),
])
def test_views_the_losses_detach_run_without_autograd(tiny_backbone, monkeypatch, kind, schedule, epoch, detach,
                                                      expected):
    learner = make_learner(tiny_backbone, kind, {})
    images, masks, labels = batch(tiny_backbone, 4)
    calls = view_calls(monkeypatch, learner)
    cfg = DaptConfig(cue="mask", schedule=schedule, detach_background_view=detach)
    dapt_losses(learner, images, masks, labels, epoch, cfg)
    assert calls == expected
    calls.clear()
    dapt_losses(learner, images, masks, labels, epoch, cfg, fast=False)
    assert calls == [(12, True)]


@pytest.mark.parametrize("kind", ["coop", "maple"])
def test_background_prompts_are_tokenised_once(tiny_backbone, monkeypatch, kind):
    learner = make_learner(tiny_backbone, kind, {})
    cfg = DaptConfig(cue="mask", schedule="joint")
    calls = count_calls(monkeypatch, tiny_backbone, "tokenize")
    first = background_text_features(learner, cfg)
    torch.testing.assert_close(background_text_features(learner, cfg), first)
    assert len(calls) == 1
    learner.fast_paths = False
    background_text_features(learner, cfg)
    background_text_features(learner, cfg)
    assert len(calls) == 3


def test_frozen_background_features_are_kept_and_learned_ones_are_not(deep_backbone, monkeypatch):
    cfg = DaptConfig(cue="mask", schedule="joint", background_words=("ground", "sky", "dishes"))
    shallow = make_learner(deep_backbone, "maple", {"depth": 1})  # no deep prompts: frozen CLIP text
    calls = count_calls(monkeypatch, learner_base, "encode_text_embeddings")
    kept = background_text_features(shallow, cfg)
    with torch.no_grad():
        shallow.ctx.add_(1.0)
    assert background_text_features(shallow, cfg) is kept and len(calls) == 1
    with torch.no_grad():
        clip_text = deep_backbone.model.encode_text(
            deep_backbone.tokenize([f"a clean origami {w}." for w in cfg.background_words]), normalize=True)
    torch.testing.assert_close(kept, clip_text, rtol=1e-5, atol=1e-6)
    for kind, moved in (("maple", "compound_prompts_text.0"), ("coop", "ctx")):
        learner = make_learner(deep_backbone, kind, {})
        before = background_text_features(learner, cfg).detach()
        with torch.no_grad():
            learner.get_parameter(moved).add_(torch.randn_like(learner.get_parameter(moved)))
        assert (background_text_features(learner, cfg) - before).abs().max() > 1e-3, kind


@pytest.mark.parametrize("kind,options", LEARNERS)
def test_frozen_text_features_are_the_class_features_chunk_by_chunk(deep_backbone, monkeypatch, kind, options):
    learner = make_learner(deep_backbone, kind, options)
    expected = learner.text_features().detach()
    rows = []
    original = learner._encode_prompts
    monkeypatch.setattr(learner, "_encode_prompts", lambda t, c: rows.append(t.shape[0]) or original(t, c))
    got = learner.frozen_text_features(chunk=2)
    assert rows == [2, 2, 1] and not got.requires_grad
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="chunk"):
        learner.frozen_text_features(chunk=0)


@pytest.fixture
def first_block_backward(tiny_backbone):
    """Batch sizes of the backward passes through the first vision block (the package's call goes down to the
    pixels); the hook is removed after the test."""
    reached = []

    def hook(module, inputs, output):
        if output.requires_grad:
            output.register_hook(lambda grad: reached.append(grad.shape[0]))

    handle = tiny_backbone.visual.transformer.resblocks[0].ln_2.register_forward_hook(hook)
    yield reached
    handle.remove()


@pytest.mark.parametrize("kind,method", [("coop", "gradcam"), ("maple", "gradcam"), ("coop", "gradcam++"),
                                         ("maple", "layercam")])
def test_batch_cams_equal_the_package_call_without_its_backward_to_the_pixels(tiny_backbone, first_block_backward,
                                                                              kind, method):
    from dapt_core.attention.cam import compute_cams
    from dapt_core.attention.shared import batch_cams

    learner = make_learner(tiny_backbone, kind, {})
    images, _, _ = batch(tiny_backbone, 6, n=3)
    targets = [2, 0, 4]
    text = learner.frozen_text_features()
    reached = first_block_backward
    expected = compute_cams(learner, images, targets, method=method, text_features=text)
    assert reached == [3]
    reached.clear()
    got = batch_cams(learner, text, images, targets, method)
    assert reached == [] and got.shape == (3, tiny_backbone.image_size, tiny_backbone.image_size)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    others = batch_cams(learner, text, images, [1, 3, 0], method)  # each image explains its own target
    assert np.abs(others - got).max() > 1e-3


class FakeDataset:
    """What the cue refresh reads of a PromptDataset: whole-image views and labels."""

    def __init__(self, images, labels, sizes):
        self.images, self.sizes = images, sizes
        self.samples = [SimpleNamespace(label=int(label)) for label in labels]

    def __len__(self):
        return len(self.samples)

    def full_view(self, index):
        return self.images[index], self.sizes[index]


@pytest.mark.parametrize("kind", ["coop", "maple"])
def test_the_fast_gradcam_cue_refresh_stores_the_plain_refresh_masks(tiny_backbone, kind):
    from dapt_core.data.masks import InMemoryMasks
    from dapt_core.train import refresh_gradcam_masks

    learner = make_learner(tiny_backbone, kind, {})
    images, _, _ = batch(tiny_backbone, 8, n=5)
    dataset = FakeDataset(images, [0, 1, 2, 3, 4], [(40, 50), (32, 32), (20, 64), (33, 31), (64, 64)])
    stores = {fast: InMemoryMasks() for fast in (True, False)}
    for fast, store in stores.items():
        refresh_gradcam_masks(learner, dataset, store, 0.5, batch_size=2, fast=fast)
    for i, size in enumerate(dataset.sizes):
        fast_mask, plain_mask = (stores[f].get(i, None) for f in (True, False))
        assert fast_mask.shape == size and 0 < fast_mask.sum() < fast_mask.size
        np.testing.assert_array_equal(fast_mask, plain_mask)


@pytest.mark.parametrize("tower", ["visual", "text"])
def test_attention_block_equals_open_clips_block_values_and_gradients(deep_backbone, tower):
    model = deep_backbone.model
    blocks = model.visual.transformer.resblocks if tower == "visual" else model.transformer.resblocks
    block, length = blocks[2], 11
    mask = None if tower == "visual" else model.attn_mask[:length, :length]
    torch.manual_seed(4)
    width = blocks[0].ln_1.normalized_shape[0]
    base = torch.randn(3, length, width)
    weights = torch.randn(3, length, width)
    results = []
    for run in (lambda x: encoders._attention_block(block, x, mask), lambda x: block(x, attn_mask=mask)):
        x = base.clone().requires_grad_(True)
        out = run(x)
        (out * weights).sum().backward()
        results.append((out.detach(), x.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-6)


def test_maple_image_path_runs_the_attention_blocks_only_on_the_fast_path(deep_backbone, monkeypatch):
    learner = make_learner(deep_backbone, "maple", {})
    images, _, _ = batch(deep_backbone, 9)
    calls = count_calls(monkeypatch, encoders, "_attention_block")
    fast = learner.encode_image(images)
    assert len(calls) == 3  # every vision block
    learner.fast_paths = False
    plain = learner.encode_image(images)
    assert len(calls) == 3
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)


def test_hooked_blocks_run_open_clips_own_forward(deep_backbone, monkeypatch):
    """Attention capture hooks ``block.attn``: a watched block must be called as a module."""
    learner = make_learner(deep_backbone, "maple", {})
    images, _, _ = batch(deep_backbone, 10)
    calls = count_calls(monkeypatch, encoders, "_attention_block")
    seen = []
    handle = deep_backbone.visual.transformer.resblocks[1].attn.register_forward_hook(
        lambda module, args, output: seen.append(args[0].shape))
    try:
        learner.encode_image(images)
    finally:
        handle.remove()
    assert len(calls) == 2 and len(seen) == 1  # blocks 0 and 2 fast, the hooked block 1 through its module


@pytest.mark.parametrize("options", [{}, {"ctx_init": "a photo of a"}, {"n_ctx": 3, "class_specific": True}])
def test_a_triplet_only_coop_step_runs_no_view_and_keeps_the_plain_gradients(deep_backbone, monkeypatch, options):
    """Over CoOp the triplet term is a constant (nothing learned reaches the image side): in the official
    schedule's first phase the fast step leaves it out and encodes only the whole image, with the gradients of
    the plain path, which computes it."""
    learner = make_learner(deep_backbone, "coop", options, seed=5)
    images, masks, labels = batch(deep_backbone, 5)
    cfg = DaptConfig(cue="mask", schedule="official")
    calls = view_calls(monkeypatch, learner)
    fast = dapt_losses(learner, images, masks, labels, 0, cfg, epochs=10)
    assert calls == [(4, True)] and set(fast) == {"ce", "total"}
    fast_grads = grads(learner, fast["total"])
    calls.clear()
    plain = dapt_losses(learner, images, masks, labels, 0, cfg, epochs=10, fast=False)
    assert calls == [(12, True)] and float(plain["triplet"]) > 0 and not plain["triplet"].requires_grad
    torch.testing.assert_close(fast["ce"], plain["ce"], rtol=1e-5, atol=1e-6)
    assert_same_grads(fast_grads, grads(learner, plain["total"]))


def test_the_triplet_stays_where_it_trains_or_the_views_are_there(deep_backbone):
    images, masks, labels = batch(deep_backbone, 6)
    maple = make_learner(deep_backbone, "maple", {}, seed=6)
    official = DaptConfig(cue="mask", schedule="official")
    terms = dapt_losses(maple, images, masks, labels, 0, official, epochs=10)
    assert set(terms) == {"ce", "triplet", "total"} and terms["triplet"].requires_grad  # visual prompts learn
    coop = make_learner(deep_backbone, "coop", {}, seed=6)
    joint = dapt_losses(coop, images, masks, labels, 0, DaptConfig(cue="mask", schedule="joint"))
    assert set(joint) == {"ce", "triplet", "foreground", "background", "total"}
    assert [objective.needs_views(coop, e, official, 10) for e in (0, 6, 7, 9)] == [False, False, True, True]
    assert [objective.needs_views(maple, e, official, 10) for e in (0, 6, 7, 9)] == [True, True, True, True]
    assert not objective.needs_views(coop, 0, DaptConfig(cue="off"), 10)
