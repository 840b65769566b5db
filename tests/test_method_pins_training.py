"""Pins of the training and evaluation protocol by value: each test fails when one plausible bug is planted.

- The Grad-CAM cue in training: the learner's Grad-CAM (``compute_cams``, itself pinned against Grad-CAM by
  hand in test_method_pins.py) of each whole image for its true class, resized to the image, binarised at
  the threshold, and those masks (cropped and flipped with the image) are what the loss receives.
- The learning rate: one epoch at a constant 1e-5, then cosine from 0.0035 (Dassl's warm-up scheduler over
  torch's CosineAnnealingLR), and the optimizer really steps with it.
- Macro-F1 by hand and against scikit-learn.
- Base-to-novel: the novel half is the second half of the classes, relabelled, with its own class names, in
  the eval command and in a grid cell.
"""

import math
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from dapt_core import train as train_module
from dapt_core.attention import shared as shared_module
from dapt_core.attention.cam import compute_cams
from dapt_core.attention.metrics import binarize
from dapt_core.data.dataset import PromptDataset
from dapt_core.data.folders import load_imagefolder
from dapt_core.learners import build_learner
from dapt_core.objective import DaptConfig
from dapt_core.train import TrainConfig, classification_metrics, harmonic_mean, lr_at, train_prompts

CLASSES = ["apple", "bird", "car", "dog"]  # base: apple, bird; novel: car, dog


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/ and test/ image folders, two images per class, not square (40 x 48)."""
    root = tmp_path_factory.mktemp("pins")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(root / split / name / f"{i}.png")
    return root


# --- the Grad-CAM cue ------------------------------------------------------------------------------------

def cue_masks(learner, views: torch.Tensor, targets: list[int], size: tuple[int, int], threshold: float):
    """Grad-CAM of each whole view for its target class, resized to the image: (map / max, binary mask)."""
    out = []
    for cam in compute_cams(learner, views, targets):
        full = cv2.resize(cam, size, interpolation=cv2.INTER_LINEAR)
        out.append((full / full.max(), binarize(full, threshold)))
    return out


def test_gradcam_cue_masks_are_for_the_true_class_and_reach_the_loss(tiny_backbone, folder, monkeypatch):
    samples = load_imagefolder(folder).train
    losses, datasets = [], []
    real_losses = train_module.dapt_losses

    def spy_losses(learner, images, masks, labels, *args, **kwargs):
        losses.append((images.clone(), masks.clone()))
        return real_losses(learner, images, masks, labels, *args, **kwargs)

    class RecordedDataset(PromptDataset):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            datasets.append(self)

    refreshed = []
    real_cams = shared_module.batch_cams

    def spy_cams(learner, text_features, images, targets, *args, **kwargs):
        refreshed.append(len(targets))
        return real_cams(learner, text_features, images, targets, *args, **kwargs)

    monkeypatch.setattr(train_module, "dapt_losses", spy_losses)
    monkeypatch.setattr(train_module, "PromptDataset", RecordedDataset)
    monkeypatch.setattr(shared_module, "batch_cams", spy_cams)  # the name train imports, module-level or not
    monkeypatch.setattr(train_module, "batch_cams", spy_cams, raising=False)

    def fresh():
        torch.manual_seed(0)
        return build_learner("coop", tiny_backbone, CLASSES, n_ctx=2)

    cfg = DaptConfig(cue="gradcam", schedule="joint", cam_threshold=0.6)
    train_prompts(fresh(), samples, TrainConfig(epochs=1, batch_size=3, selection="last"), cfg, progress=False)
    (dataset,) = [d for d in datasets if d.train]
    # the refresh runs once per epoch over the whole set, in batches of 16 (here one), on the fast path
    assert refreshed == [len(samples)]
    # the cue of epoch 0 is the untrained learner's Grad-CAM of each whole image for its true class, at the
    # image's size (40 x 48), binarised at the configured threshold (pixels at the threshold may go either way)
    views = torch.stack([dataset.full_view(i)[0] for i in range(len(samples))])
    labels = [s.label for s in samples]
    expected = cue_masks(fresh(), views, labels, (48, 40), 0.6)
    for i, (sample, (scaled, mask)) in enumerate(zip(samples, expected)):
        stored = dataset.masks.get(i, sample)
        assert stored.shape == (40, 48) and set(np.unique(stored)) <= {0.0, 1.0}
        assert ((stored == mask) | (np.abs(scaled - 0.6) < 1e-4)).all(), i
    others = cue_masks(fresh(), views, [(label + 1) % len(CLASSES) for label in labels], (48, 40), 0.6)
    assert max(float((other != mask).mean()) for (_, other), (_, mask) in zip(others, expected)) > 0.05
    # what the loss receives: each image's own cue mask, cropped and flipped with it
    dataset.set_epoch(0)
    views_seen = [dataset[i] for i in range(len(samples))]
    seen = []
    for images, masks in losses:
        for image, mask in zip(images, masks):
            (match,) = [v for v in views_seen if torch.equal(v["image"], image)]
            assert torch.equal(mask, match["mask"])
            seen.append(mask)
    assert len(seen) == len(samples) and 0 < float(torch.stack(seen).mean()) < 1


# --- the learning rate -----------------------------------------------------------------------------------

def test_lr_is_one_constant_warmup_epoch_then_cosine_from_0_0035():
    cfg = TrainConfig()
    assert (cfg.epochs, cfg.lr, cfg.warmup_epochs, cfg.warmup_lr) == (10, 0.0035, 1, 1e-5)
    # Dassl's ConstantWarmupScheduler: the warm-up rate, then its successor CosineAnnealingLR(T_max=epochs)
    # from its first value on
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    expected = [cfg.warmup_lr]
    for _ in range(cfg.epochs - 1):
        expected.append(cosine.get_last_lr()[0])
        optimizer.step()
        cosine.step()
    assert [lr_at(e, cfg) for e in range(cfg.epochs)] == pytest.approx(expected, rel=1e-12, abs=0)
    assert lr_at(0, cfg) == 1e-5 and lr_at(1, cfg) == 0.0035
    assert lr_at(5, cfg) == pytest.approx(0.5 * 0.0035 * (1 + math.cos(math.pi * 4 / 10)), rel=1e-12)


def test_the_optimizer_steps_with_the_scheduled_rate(tiny_backbone, folder, monkeypatch):
    samples = load_imagefolder(folder).train[:3]
    stepped, reported = [], []
    real_step = torch.optim.SGD.step

    def spy_step(self, *args, **kwargs):
        stepped.append([group["lr"] for group in self.param_groups])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", spy_step)
    torch.manual_seed(0)
    learner = build_learner("coop", tiny_backbone, CLASSES, n_ctx=2)
    cfg = TrainConfig(epochs=3, batch_size=2, lr=0.02, warmup_lr=1e-4, selection="last")
    train_prompts(learner, samples, cfg, DaptConfig(), on_step=lambda r: reported.append(r), progress=False)
    assert [r.epoch for r in reported] == [0, 0, 1, 1, 2, 2]
    assert stepped == [[lr_at(r.epoch, cfg)] for r in reported]
    assert [r.lr for r in reported] == [lr_at(r.epoch, cfg) for r in reported]
    assert stepped[0] == [1e-4] and stepped[2] == [0.02]


# --- macro-F1 --------------------------------------------------------------------------------------------

def test_macro_f1_by_hand():
    preds, labels = np.array([0, 1, 2, 2, 1]), np.array([0, 1, 1, 1, 1])
    # class 0: tp 1 -> F1 1; class 1: tp 2, fn 2 -> 4/6; class 2 (never true, predicted twice): F1 0
    assert classification_metrics(preds, labels) == {"accuracy": 60.0, "macro_f1": round(100 * (1 + 4 / 6) / 3, 4),
                                                     "n": 5}
    # percentages kept to 4 decimals; a single image is a set like any other
    assert classification_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]))["accuracy"] == 66.6667
    assert classification_metrics(np.array([1]), np.array([1])) == {"accuracy": 100.0, "macro_f1": 100.0, "n": 1}
    with pytest.raises(ValueError, match="^no images to evaluate$"):
        classification_metrics(np.array([], dtype=int), np.array([], dtype=int))


def test_harmonic_mean_by_hand():
    assert harmonic_mean(80.0, 60.0) == 2 * 80.0 * 60.0 / 140.0
    assert harmonic_mean(50.0, 50.0) == 50.0 and harmonic_mean(90.0, 0.0) == 0.0 and harmonic_mean(0.0, 0.0) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_equals_scikit_learn(seed):
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, 40)
    preds = np.where(rng.random(40) < 0.5, labels, rng.integers(0, 7, 40))  # class 6 is only ever predicted
    got = classification_metrics(preds, labels)
    assert got["macro_f1"] == pytest.approx(100 * f1_score(labels, preds, average="macro"), abs=1e-4)
    assert got["accuracy"] == pytest.approx(100 * accuracy_score(labels, preds), abs=1e-4)


# --- base-to-novel ---------------------------------------------------------------------------------------

def spy_evaluate(monkeypatch):
    """Records (class names, sorted [(label, class name)] of the images, metrics) of every evaluate call."""
    calls = []
    real = train_module.evaluate

    def spy(learner, samples, *args, **kwargs):
        metrics = real(learner, samples, *args, **kwargs)
        calls.append((learner.classnames, sorted((s.label, s.classname) for s in samples), metrics))
        return metrics

    monkeypatch.setattr(train_module, "evaluate", spy)
    return calls


HALVES = [(["apple", "bird"], [(0, "apple")] * 2 + [(1, "bird")] * 2),
          (["car", "dog"], [(0, "car")] * 2 + [(1, "dog")] * 2)]


def test_eval_base_to_novel_scores_the_second_half_relabelled(tiny_backbone, folder, tmp_path, monkeypatch, capsys):
    import json

    from dapt_core.checkpoint import save_prompt_set
    from dapt_core.cli import main

    torch.manual_seed(0)
    path = save_prompt_set(build_learner("coop", tiny_backbone, CLASSES[:2], n_ctx=2), tmp_path / "b.safetensors")
    calls = spy_evaluate(monkeypatch)
    assert main(["eval", "--prompts", str(path), "--device", "cpu", "--base-to-novel",
                 "--data", f"imagefolder:{folder}"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(names, images) for names, images, _ in calls] == HALVES
    assert (result["base"], result["novel"]) == (calls[0][2]["accuracy"], calls[1][2]["accuracy"])


def test_a_grid_cell_scores_the_second_half_relabelled(tiny_backbone, folder, monkeypatch):
    from dapt_core.grid.trial import evaluate_cell

    learner = build_learner("coop", tiny_backbone, CLASSES[:2], n_ctx=2)
    calls = spy_evaluate(monkeypatch)
    result = evaluate_cell(learner, load_imagefolder(folder), SimpleNamespace(setting="base_to_novel"), 8)
    assert [(names, images) for names, images, _ in calls] == HALVES
    assert (result["base"], result["novel"]) == (calls[0][2], calls[1][2])
    assert learner.classnames == CLASSES[:2]
