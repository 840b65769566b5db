"""DAPT's background term against the official construction (Ferenas/DAPT trainers/maple.py), by value.

The reference below is written step by step over open_clip's blocks as the official code computes it, on the
same tiny random weights the learner uses: class prompts ``[SOS][ctx] of a {class}.`` and background prompts
``"a clean origami {word}."`` embedded as plain text, in ONE text batch; deep text prompts overwrite rows
1..n_ctx before text blocks 1..J-1 (every row, background ones included); the visual prompts are appended
after the patch tokens and replaced before vision blocks 1..J-1; the full, foreground and background views go
through the image tower one by one; nothing is detached in the background term. The official slice fault
(25 of 32 background rows) is fixed in the reference as in the project: class rows are the class prompts,
background rows all the background prompts.
"""

import pytest
import torch
import torch.nn.functional as F

from dapt_core.learners import build_learner
from dapt_core.objective import DaptConfig, background_text_features, dapt_losses

CLASSES = ["dog", "cat", "red car"]
DEEP_LAYERS = 3  # towers deep enough for two deep prompt layers (MaPLe depth 3)


@pytest.fixture(scope="module")
def deep_backbone(tiny_variant):
    """A tiny random CLIP like tiny-vit, with three blocks per tower."""
    def deeper(cfg):
        cfg["vision_cfg"]["layers"] = cfg["text_cfg"]["layers"] = DEEP_LAYERS
    return tiny_variant("tiny-vit-deep", deeper)


def official_text_features(learner, words):
    """(class rows, background rows) of the official MultiModalPromptLearner + TextEncoder, unnormalised."""
    model, n_ctx = learner.backbone.model, learner.n_ctx
    cls_tokens = learner.backbone.tokenize([f"a photo of a {c}." for c in CLASSES])
    bg_tokens = learner.backbone.tokenize([f"a clean origami {w}." for w in words])
    tokens = torch.cat([cls_tokens, bg_tokens])
    with torch.no_grad():
        embedding = model.token_embedding(tokens)
    n_cls = len(CLASSES)
    ctx = learner.ctx.unsqueeze(0).expand(n_cls, -1, -1)
    class_prompts = torch.cat([embedding[:n_cls, :1], ctx, embedding[:n_cls, 1 + n_ctx:]], dim=1)
    x = torch.cat([class_prompts, embedding[n_cls:]]) + model.positional_embedding
    deep = list(learner.compound_prompts_text)
    for i, block in enumerate(model.transformer.resblocks):
        if 1 <= i <= len(deep):
            x = torch.cat([x[:, :1], deep[i - 1].expand(x.shape[0], -1, -1), x[:, 1 + n_ctx:]], dim=1)
        x = block(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection
    return x[:n_cls], x[n_cls:]


def official_image_features(learner, images):
    """The official prompted image encoder on one batch, unnormalised."""
    visual, n_ctx = learner.backbone.visual, learner.n_ctx
    shared_ctx = learner.proj(learner.ctx)
    deep = [layer(p) for layer, p in zip(learner.compound_prompt_projections, learner.compound_prompts_text)]
    x = visual.conv1(images).flatten(2).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + visual.positional_embedding
    x = torch.cat([x, shared_ctx.expand(x.shape[0], -1, -1)], dim=1)
    x = visual.ln_pre(x)
    for i, block in enumerate(visual.transformer.resblocks):
        if 1 <= i <= len(deep):
            x = torch.cat([x[:, :-n_ctx], deep[i - 1].expand(x.shape[0], -1, -1)], dim=1)
        x = block(x)
    return visual.ln_post(x[:, 0]) @ visual.proj


def official_losses(learner, images, masks, labels, words):
    """The official CustomCLIP.forward loss terms (background slice fixed), each unweighted."""
    scale = learner.backbone.model.logit_scale.exp()
    text_fg, text_bg = (F.normalize(t, dim=-1) for t in official_text_features(learner, words))
    image = F.normalize(official_image_features(learner, images), dim=-1)
    image_fg = F.normalize(official_image_features(learner, images * masks), dim=-1)
    image_bg = F.normalize(official_image_features(learner, images * (1 - masks)), dim=-1)
    pseudo_label = torch.argmax(image_bg @ text_bg.t(), dim=-1)
    return {"ce": F.cross_entropy(scale * image @ text_fg.t(), labels),
            "triplet": F.triplet_margin_loss(image, image_fg.detach(), image_bg.detach(), margin=1.5),
            "foreground": F.cross_entropy(scale * image_fg.detach() @ text_fg.t(), labels),
            "background": F.cross_entropy(scale * image_bg @ text_bg.t(), pseudo_label),
            "pseudo_label": pseudo_label}


def batch(backbone, seed):
    torch.manual_seed(seed)
    size = backbone.image_size
    images = torch.randn(4, 3, size, size)
    masks = torch.zeros(4, 1, size, size)
    masks[..., 4:20, 8:28] = 1
    return images, masks, torch.tensor([0, 2, 1, 2])


def grads(learner, loss):
    learner.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}


def assert_same_grads(ours, theirs, tolerance=1e-5):
    """Same parameters receive a gradient, each equal up to fp32 rounding relative to its own size (the
    batched encoder call sums in another order than three separate ones)."""
    assert set(ours) == set(theirs)
    for name in theirs:
        error = float((ours[name] - theirs[name]).norm() / theirs[name].norm())
        assert error < tolerance, f"{name}: relative gradient error {error:.2e}"


def maple(backbone, seed=0, **options):
    torch.manual_seed(seed)
    learner = build_learner("maple", backbone, CLASSES, **{"depth": DEEP_LAYERS, **options})
    with torch.no_grad():  # move the projections off their shared start so that each layer's path differs
        for layer in learner.compound_prompt_projections:
            layer.weight.add_(0.05 * torch.randn_like(layer.weight))
    return learner


@pytest.mark.parametrize("seed", [0, 1])
def test_maple_background_term_equals_the_official_one(deep_backbone, seed):
    learner = maple(deep_backbone, seed)
    images, masks, labels = batch(deep_backbone, seed)
    cfg = DaptConfig(cue="mask", schedule="joint")
    reference = official_losses(learner, images, masks, labels, cfg.background_words)
    theirs = grads(learner, reference["background"])
    ours_terms = dapt_losses(learner, images, masks, labels, 0, cfg)
    torch.testing.assert_close(ours_terms["background"], reference["background"].detach(), rtol=1e-5, atol=1e-6)
    assert_same_grads(grads(learner, ours_terms["background"]), theirs)
    # the term reaches the visual prompts and the deep text prompts; ctx only through its visual projection
    assert {"proj.weight", "compound_prompts_text.0", "compound_prompts_text.1",
            "compound_prompt_projections.1.weight", "ctx"} <= set(theirs)


@pytest.mark.parametrize("epoch", [0, 6, 7, 9])
def test_maple_total_loss_equals_the_official_one_in_both_phases(deep_backbone, epoch):
    learner = maple(deep_backbone, 3)
    images, masks, labels = batch(deep_backbone, 3)
    cfg = DaptConfig(cue="mask")  # the official schedule: `if epoch > 6` in the official forward
    ref = official_losses(learner, images, masks, labels, cfg.background_words)
    regulariser = 0.1 * ref["foreground"] + 0.5 * ref["background"] if epoch > 6 else 0.8 * ref["triplet"]
    reference_total = ref["ce"] + regulariser
    theirs = grads(learner, reference_total)
    ours = dapt_losses(learner, images, masks, labels, epoch, cfg, epochs=10)
    torch.testing.assert_close(ours["total"], reference_total.detach(), rtol=1e-5, atol=1e-6)
    assert_same_grads(grads(learner, ours["total"]), theirs)


def test_maple_background_prompts_are_plain_text_at_the_input(deep_backbone):
    words = ("ground", "sky", "dishes")
    cfg = DaptConfig(cue="mask", background_words=words)
    shallow = maple(deep_backbone, depth=1)  # no deep prompts: the background prompts are frozen CLIP text
    with torch.no_grad():
        clip_text = deep_backbone.model.encode_text(
            deep_backbone.tokenize([f"a clean origami {w}." for w in words]), normalize=True)
        torch.testing.assert_close(background_text_features(shallow, cfg), clip_text, rtol=1e-5, atol=1e-6)
        deep = maple(deep_backbone)
        _, reference = official_text_features(deep, words)
        before = background_text_features(deep, cfg)
        torch.testing.assert_close(before, F.normalize(reference, dim=-1), rtol=1e-5, atol=1e-6)
        assert (before - clip_text).abs().max() > 1e-3  # the deep prompts do act on them
        deep.ctx.add_(torch.randn_like(deep.ctx))
        torch.testing.assert_close(background_text_features(deep, cfg), before)  # no learned ctx at the input


def test_background_view_trains_the_visual_prompts_unless_detached(deep_backbone):
    images, masks, labels = batch(deep_backbone, 5)
    visual_only = ("proj.weight", "proj.bias", "compound_prompt_projections.0.weight",
                   "compound_prompt_projections.1.weight")
    for detach in (False, True):
        learner = maple(deep_backbone, 5)
        cfg = DaptConfig(cue="mask", schedule="joint", detach_background_view=detach)
        got = grads(learner, dapt_losses(learner, images, masks, labels, 0, cfg)["background"])
        norms = {name: float(got[name].abs().sum()) if name in got else 0.0 for name in visual_only + ("ctx",)}
        if detach:  # only the background text can move: the deep text prompts, never the image side
            assert set(norms.values()) == {0.0}
        else:
            assert min(norms.values()) > 0.0
        assert got["compound_prompts_text.0"].abs().sum() > 0 and got["compound_prompts_text.1"].abs().sum() > 0


def test_coop_background_prompts_keep_the_learned_context(tiny_backbone):
    words = ("ground", "water", "spoon")
    cfg = DaptConfig(cue="mask", schedule="joint", background_words=words)
    torch.manual_seed(0)
    learner = build_learner("coop", tiny_backbone, CLASSES, ctx_init="a photo of a")
    with torch.no_grad():  # untrained context "a photo of a": the prompts are CLIP's "a photo of a {word}."
        clip_text = tiny_backbone.model.encode_text(
            tiny_backbone.tokenize([f"a photo of a {w}." for w in words]), normalize=True)
        torch.testing.assert_close(background_text_features(learner, cfg), clip_text, rtol=1e-5, atol=1e-6)
    size = tiny_backbone.image_size
    images, masks = torch.randn(2, 3, size, size), torch.zeros(2, 1, size, size)
    masks[..., 8:24, 8:24] = 1
    got = grads(learner, dapt_losses(learner, images, masks, torch.tensor([0, 1]), 0, cfg)["background"])
    assert got["ctx"].abs().sum() > 0  # the background term trains CoOp's context


def test_background_prompts_never_enter_the_class_logits(deep_backbone):
    learner = maple(deep_backbone, 7)
    images, masks, labels = batch(deep_backbone, 7)
    ce = {}
    for name, words in {"official": DaptConfig().background_words, "other": ("moon", "desk")}.items():
        terms = dapt_losses(learner, images, masks, labels, 0, DaptConfig(cue="mask", schedule="joint",
                                                                           background_words=words))
        ce[name] = terms["ce"].detach()
    with torch.no_grad():
        logits = learner(images)
    assert logits.shape == (4, len(CLASSES))
    torch.testing.assert_close(ce["official"], F.cross_entropy(logits, labels), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ce["official"], ce["other"])
