import math

import pytest
import torch

from dapt_core.learners import build_learner
from dapt_core.objective import (
    OFFICIAL_BACKGROUNDS, DaptConfig, background_alignment_loss, dapt_losses, decouple,
    foreground_alignment_loss, loss_weights, pull_push_loss,
)


def test_decouple_hides_pixels_as_the_mean_colour():
    images = torch.randn(1, 3, 2, 2)
    masks = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    fg, bg = decouple(images, masks)
    assert torch.equal(fg + bg, images)
    assert fg[0, :, 0, 1].abs().sum() == 0 and bg[0, :, 0, 0].abs().sum() == 0


def test_foreground_alignment_by_hand():
    fg = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    labels = torch.tensor([0, 2])
    scale = 2.0
    # row 0 logits: 2*[1, 0, 0.6]; row 1: 2*[0, 1, 0.8]
    row0 = -2.0 + math.log(math.exp(2.0) + math.exp(0.0) + math.exp(1.2))
    row1 = -1.6 + math.log(math.exp(0.0) + math.exp(2.0) + math.exp(1.6))
    assert foreground_alignment_loss(fg, text, labels, scale).item() == pytest.approx((row0 + row1) / 2, abs=1e-6)


def test_foreground_alignment_trains_only_the_text_side():
    fg = torch.tensor([[1.0, 0.0]], requires_grad=True)
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    foreground_alignment_loss(fg, text, torch.tensor([1]), 1.0).backward()
    assert fg.grad is None and text.grad.abs().sum() > 0


def test_background_alignment_uses_the_argmax_pseudo_label():
    bg = torch.tensor([[0.0, 1.0]])
    words = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # logits 3*[0, 0.8]; pseudo-label is word 1
    expected = -2.4 + math.log(math.exp(0.0) + math.exp(2.4))
    assert background_alignment_loss(bg, words, 3.0).item() == pytest.approx(expected, abs=1e-6)


def test_pull_push_by_hand():
    anchor = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    positive = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    negative = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    # row 0: d(a,p)=sqrt(2), d(a,n)=0 -> sqrt(2)+1.5 ; row 1: 0 - 2 + 1.5 < 0 -> 0
    expected = (math.sqrt(2) + 1.5) / 2
    assert pull_push_loss(anchor, positive, negative, 1.5).item() == pytest.approx(expected, abs=1e-4)


def test_pull_push_moves_only_the_anchor():
    anchor = torch.tensor([[1.0, 0.0]], requires_grad=True)
    positive = torch.tensor([[0.0, 1.0]], requires_grad=True)
    negative = torch.tensor([[1.0, 0.0]], requires_grad=True)
    pull_push_loss(anchor, positive, negative, 1.5).backward()
    assert anchor.grad.abs().sum() > 0 and positive.grad is None and negative.grad is None


def test_official_and_joint_schedules():
    official = DaptConfig(cue="mask")
    assert loss_weights(0, official) == {"triplet": 0.8, "foreground": 0.0, "background": 0.0}
    assert loss_weights(6, official)["triplet"] == 0.8
    assert loss_weights(7, official) == {"triplet": 0.0, "foreground": 0.1, "background": 0.5}
    joint = DaptConfig(cue="gradcam", schedule="joint", triplet_weight=0.3)
    assert loss_weights(0, joint) == loss_weights(9, joint) == {"triplet": 0.3, "foreground": 0.1,
                                                                  "background": 0.5}
    assert set(loss_weights(3, DaptConfig()).values()) == {0.0}


@pytest.mark.parametrize("bad", [{"cue": "seem"}, {"schedule": "cyclic"}, {"background_words": ()}])
def test_config_refuses_unknown_settings(bad):
    with pytest.raises(ValueError):
        DaptConfig(**bad)


def test_official_vocabulary_is_the_released_one():
    assert len(OFFICIAL_BACKGROUNDS) == 25 and OFFICIAL_BACKGROUNDS[0] == "ground" and "sign" in OFFICIAL_BACKGROUNDS


@pytest.mark.parametrize("kind", ["coop", "maple"])
def test_background_prompts_never_enter_the_class_logits(tiny_backbone, kind, monkeypatch):
    torch.manual_seed(0)
    classes = ["dog", "cat", "fish"]
    learner = build_learner(kind, tiny_backbone, classes)
    size = tiny_backbone.image_size
    images, labels = torch.randn(2, 3, size, size), torch.tensor([0, 2])
    masks = torch.zeros(2, 1, size, size)
    masks[..., 8:24, 8:24] = 1
    cfg = DaptConfig(cue="mask", schedule="joint")
    calls = []
    original = learner.encode_image
    monkeypatch.setattr(learner, "encode_image", lambda x: calls.append(x.shape[0]) or original(x))
    terms = dapt_losses(learner, images, masks, labels, epoch=0, cfg=cfg)
    assert calls == [6], "full, foreground and background views must go through the encoder in one call"
    assert set(terms) == {"ce", "triplet", "foreground", "background", "total"}
    expected = terms["ce"] + 0.8 * terms["triplet"] + 0.1 * terms["foreground"] + 0.5 * terms["background"]
    assert torch.allclose(terms["total"], expected)
    # the class cross-entropy is computed over exactly the class prompts
    logits = learner(images)
    assert logits.shape == (2, len(classes))
    assert torch.allclose(terms["ce"], torch.nn.functional.cross_entropy(logits, labels), atol=1e-5)
    terms["total"].backward()
    assert learner.ctx.grad is not None


def test_dapt_off_is_plain_cross_entropy(tiny_backbone):
    learner = build_learner("coop", tiny_backbone, ["a", "b"], ctx_init="a photo of a")
    images = torch.randn(2, 3, 32, 32)
    terms = dapt_losses(learner, images, None, torch.tensor([0, 1]), 0, DaptConfig())
    assert set(terms) == {"ce", "total"} and torch.equal(terms["ce"], terms["total"])
