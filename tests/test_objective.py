import logging
import math

import pytest
import torch

from dapt_core.backgrounds import OFFICIAL_BACKGROUNDS, VOCABULARIES, resolve_background_words, vocabulary_name
from dapt_core.learners import build_learner
from dapt_core.objective import (
    DaptConfig, background_alignment_loss, dapt_losses, decouple, foreground_alignment_loss, loss_weights,
    pull_push_loss, run_switch_epoch, scaled_switch_epoch, unreached_terms, warn_unreached_terms,
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


def test_background_alignment_trains_both_sides_against_a_fixed_pseudo_label():
    bg = torch.tensor([[0.0, 1.0]], requires_grad=True)
    words = torch.tensor([[1.0, 0.0], [0.6, 0.8]], requires_grad=True)
    background_alignment_loss(bg, words, 3.0).backward()
    # CE(3 * bg @ W^T, 1): d/d(bg) = 3 (p - e_1) W, d/dW = 3 (p - e_1)^T bg, with p = softmax(3 * [0, 0.8])
    residual = torch.softmax(torch.tensor([0.0, 2.4]), dim=0) - torch.tensor([0.0, 1.0])
    assert torch.allclose(bg.grad, 3 * residual[None] @ words.detach(), atol=1e-6)
    assert torch.allclose(words.grad, 3 * residual[:, None] * bg.detach(), atol=1e-6)


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


def test_official_schedule_at_ten_epochs_switches_at_epoch_seven():
    official = DaptConfig(cue="mask")
    triplet_only = {"triplet": 0.8, "foreground": 0.0, "background": 0.0}
    alignment = {"triplet": 0.0, "foreground": 0.1, "background": 0.5}
    assert [loss_weights(e, official, 10) for e in range(10)] == [triplet_only] * 7 + [alignment] * 3
    assert unreached_terms(official, 10) == []


def test_official_schedule_is_reproduced_in_a_five_epoch_run_and_says_what_it_never_uses(caplog):
    official = DaptConfig(cue="mask")
    assert all(loss_weights(e, official, 5) == {"triplet": 0.8, "foreground": 0.0, "background": 0.0}
               for e in range(5))
    with caplog.at_level(logging.WARNING, logger="dapt_core.objective"):
        assert warn_unreached_terms(official, 5) == ["foreground", "background"]
    assert "never uses the foreground, background" in caplog.text and "over 5 epoch" in caplog.text


def test_scaled_schedule_compresses_the_official_switch():
    scaled = DaptConfig(cue="gradcam", schedule="scaled")
    # round(0.7 * epochs) within [1, epochs - 1]
    assert [scaled_switch_epoch(n) for n in (1, 2, 3, 5, 10, 20)] == [0, 1, 2, 4, 7, 14]
    assert [loss_weights(e, scaled, 5)["triplet"] for e in range(5)] == [0.8] * 4 + [0.0]
    assert [loss_weights(e, scaled, 5)["background"] for e in range(5)] == [0.0] * 4 + [0.5]
    assert run_switch_epoch(scaled, 10) == 7 == run_switch_epoch(DaptConfig(), 10)
    assert unreached_terms(scaled, 5) == [] and unreached_terms(scaled, 1) == ["triplet"]
    with pytest.raises(ValueError, match="number of epochs"):
        loss_weights(0, scaled)


def test_joint_schedule_and_zero_weights():
    joint = DaptConfig(cue="gradcam", schedule="joint", triplet_weight=0.3)
    assert loss_weights(0, joint) == loss_weights(9, joint) == {"triplet": 0.3, "foreground": 0.1,
                                                                  "background": 0.5}
    assert run_switch_epoch(joint, 10) is None
    assert set(loss_weights(3, DaptConfig(), 10).values()) == {0.0} and unreached_terms(DaptConfig(), 10) == []
    # a term switched off by its weight is not "unreached"
    assert unreached_terms(DaptConfig(cue="mask", foreground_weight=0.0, background_weight=0.0), 5) == []


@pytest.mark.parametrize("bad", [
    {"cue": "seem"}, {"schedule": "cyclic"}, {"background_words": ()}, {"background_words": ("sky",)},
    {"background_words": ("sky", "sky")}, {"background_words": ("sky", " ")}, {"background_words": "sky"},
    {"switch_epoch": -1}, {"switch_epoch": 2.5}, {"triplet_weight": -0.1}, {"margin": 0.0},
    {"cam_threshold": 0.0}, {"cam_threshold": 1.5}, {"background_template": "a clean origami"},
    {"context_background_template": "{} {}."},
])
def test_config_refuses_bad_settings(bad):
    with pytest.raises(ValueError):
        DaptConfig(**bad)


def test_background_vocabularies():
    general = ("ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea",
               "railway", "railroad", "keyboard", "helmet", "cloud", "house", "mountain", "ocean", "road", "rock",
               "street", "valley", "bridge", "sign")
    food = ("table", "forks", "tablecloth", "hands", "spoon", "glasses", "dishes")
    assert OFFICIAL_BACKGROUNDS == general + food and DaptConfig().background_words == general + food
    # generic: the official general list, without the food-scene words
    assert VOCABULARIES["generic"] == general and len(VOCABULARIES["generic"]) == 25
    assert resolve_background_words("official") == OFFICIAL_BACKGROUNDS
    assert vocabulary_name(VOCABULARIES["generic"]) == "generic" and vocabulary_name(("a", "b")) is None


def test_background_words_file(tmp_path):
    good = tmp_path / "words.txt"
    good.write_text("# my backgrounds\nsand\n\n  desert  \nsnow field\n", encoding="utf-8")
    assert resolve_background_words(str(good)) == ("sand", "desert", "snow field")
    dupes = tmp_path / "dupes.txt"
    dupes.write_text("sand\nsand\n", encoding="utf-8")
    with pytest.raises(ValueError, match="repeats sand"):
        resolve_background_words(str(dupes))
    with pytest.raises(ValueError, match="neither a preset"):
        resolve_background_words(str(tmp_path / "missing.txt"))


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
    # MaPLe: full and background views in one call with autograd, the detached foreground view in one without;
    # CoOp (a frozen image side): the three views in one call
    expected_calls = [6] if kind == "coop" else [4, 2]
    assert calls == expected_calls, "the views must go through the encoder batched (tests/test_fast_paths.py)"
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
