import pytest
import torch

from dapt_core.backbones import list_backbones, load_backbone
from dapt_core.learners import CoOp, CoOpConfig, PromptError, build_learner, list_learners

CLASSES = ["dog", "cat", "red car", "hot_air balloon"]


def zero_shot_logits(backbone, images, classnames):
    model = backbone.model
    with torch.no_grad():
        text = model.encode_text(backbone.tokenize([f"a photo of a {c}." for c in classnames]), normalize=True)
        image = model.encode_image(images, normalize=True)
        return model.logit_scale.exp() * image @ text.t()


def test_untrained_coop_reproduces_zero_shot_clip(tiny_backbone):
    torch.manual_seed(1)
    learner = CoOp(tiny_backbone, CLASSES, CoOpConfig(ctx_init="a photo of a"))
    images = torch.randn(3, 3, tiny_backbone.image_size, tiny_backbone.image_size)
    with torch.no_grad():
        ours = learner(images)
    reference = zero_shot_logits(tiny_backbone, images, [c.replace("_", " ") for c in CLASSES])
    assert ours.shape == (3, len(CLASSES))
    assert (ours - reference).abs().max().item() < 1e-4


def test_trained_context_changes_logits(tiny_backbone):
    learner = CoOp(tiny_backbone, CLASSES, CoOpConfig(ctx_init="a photo of a"))
    images = torch.randn(2, 3, tiny_backbone.image_size, tiny_backbone.image_size)
    with torch.no_grad():
        before = learner(images)
        learner.ctx.add_(torch.randn_like(learner.ctx))
        after = learner(images)
    assert (before - after).abs().max().item() > 1e-3


@pytest.mark.parametrize("kind", list_learners())
def test_every_learner_forward_and_backward(tiny_backbone, kind):
    torch.manual_seed(0)
    learner = build_learner(kind, tiny_backbone, CLASSES)
    images = torch.randn(2, 3, tiny_backbone.image_size, tiny_backbone.image_size)
    logits = learner(images)
    assert logits.shape == (2, len(CLASSES))
    logits.logsumexp(dim=1).sum().backward()
    learned = [n for n, p in learner.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert "ctx" in learned
    assert not any(p.requires_grad for p in tiny_backbone.model.parameters())
    assert all(k.startswith(("ctx", "proj", "compound_")) for k in learner.state_dict())


def test_maple_visual_prompts_reach_the_image_features(tiny_backbone):
    torch.manual_seed(0)
    learner = build_learner("maple", tiny_backbone, CLASSES, depth=2)
    images = torch.randn(2, 3, tiny_backbone.image_size, tiny_backbone.image_size)
    features = learner.encode_image(images)
    features.sum().backward()
    assert learner.proj.weight.grad.abs().sum() > 0
    assert learner.compound_prompt_projections[0].weight.grad.abs().sum() > 0


def test_class_specific_context_and_random_init(tiny_backbone):
    learner = build_learner("coop", tiny_backbone, CLASSES, n_ctx=3, class_specific=True)
    assert learner.ctx.shape == (len(CLASSES), 3, tiny_backbone.text_width)
    assert learner.text_features().shape == (len(CLASSES), tiny_backbone.embed_dim)
    with pytest.raises(PromptError, match="class-specific"):
        learner.set_classnames(["a", "b"])


def test_switching_classes_keeps_context(tiny_backbone):
    learner = build_learner("maple", tiny_backbone, CLASSES)
    ctx = learner.ctx.detach().clone()
    learner.set_classnames(["zebra", "yak", "emu"])
    assert learner.text_features().shape[0] == 3
    assert torch.equal(learner.ctx.detach(), ctx)


@pytest.mark.parametrize("bad", [["only one"], ["a", "a"], ["a", "  "]])
def test_bad_class_lists_are_refused(tiny_backbone, bad):
    with pytest.raises(PromptError):
        build_learner("coop", tiny_backbone, bad)


def test_unknown_learner_and_option(tiny_backbone):
    with pytest.raises(PromptError, match="coop, maple"):
        build_learner("vpt", tiny_backbone, CLASSES)
    with pytest.raises(PromptError, match="no option"):
        build_learner("coop", tiny_backbone, CLASSES, depth=3)


@pytest.mark.parametrize("spec", list_backbones(), ids=lambda s: s.name)
def test_every_registered_backbone_runs_both_learners(spec):
    from dapt_core.weights import WeightsNotFoundError

    try:
        backbone = load_backbone(spec.name, device="cpu", download=False)
    except WeightsNotFoundError as err:
        pytest.skip(f"weights of {spec.name} are not on this machine: {err}")
    size = backbone.image_size
    for kind in list_learners():
        learner = build_learner(kind, backbone, CLASSES)
        with torch.no_grad():
            assert learner(torch.zeros(1, 3, size, size)).shape == (1, len(CLASSES))


def test_maple_depth_is_capped_at_the_backbone_depth(tiny_backbone):
    learner = build_learner("maple", tiny_backbone, CLASSES, depth=9)
    assert learner.cfg.depth == 2 and len(learner.compound_prompts_text) == 1
    with pytest.raises(PromptError, match="at least 1"):
        build_learner("maple", tiny_backbone, CLASSES, depth=0)


def test_plain_prompts_too_short_for_the_deep_prompts_are_refused(tiny_backbone):
    learner = build_learner("maple", tiny_backbone, CLASSES, depth=2)
    with pytest.raises(PromptError, match="deep prompts overwrite 2"):
        learner.plain_prompt_features(["sky"])  # one token: the deep prompts would overwrite its end token
    with pytest.raises(PromptError, match="too long"):
        learner.plain_prompt_features([" ".join(["sky"] * 80)])
    assert learner.plain_prompt_features(["blue sky"]).shape == (1, tiny_backbone.embed_dim)


@pytest.mark.parametrize("kind", list_learners())
def test_learns_image_side_says_whether_a_learned_tensor_reaches_the_image_features(tiny_backbone, kind):
    learner = build_learner(kind, tiny_backbone, ["cat", "dog"])
    images = torch.randn(2, 3, tiny_backbone.image_size, tiny_backbone.image_size)
    with torch.enable_grad():
        reached = learner.encode_image(images).requires_grad
    assert learner.learns_image_side == reached
    assert learner.learns_image_side == (kind == "maple")
