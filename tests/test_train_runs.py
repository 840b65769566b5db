"""Training runs: the configuration checks, model selection (best_val / last) and resuming only the same run."""

import logging
from dataclasses import replace
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from dapt_core import train as train_module
from dapt_core.data.folders import load_imagefolder
from dapt_core.learners import build_learner
from dapt_core.objective import DaptConfig
from dapt_core.run_state import RunMismatchError
from dapt_core.train import TrainConfig, TrainingCancelled, evaluate, model_selection, train_prompts

CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three random images per class for training and two for validation."""
    root = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = (rng.random((36, 36, 3)) * 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return {split: load_imagefolder(root / split, test_fraction=0.0).train for split in ("train", "val")}


def fresh(backbone):
    torch.manual_seed(0)
    return build_learner("coop", backbone, CLASSES, n_ctx=4)


@pytest.mark.parametrize("bad,field", [
    ({"epochs": 0}, "epochs"), ({"epochs": 2.5}, "epochs"), ({"batch_size": 0}, "batch_size"),
    ({"shots": -5}, "shots"), ({"lr": 0.0}, "lr"), ({"lr": float("nan")}, "lr"), ({"warmup_lr": -1e-5}, "warmup_lr"),
    ({"momentum": 1.0}, "momentum"), ({"crop_min": 0.0}, "crop_min"), ({"crop_min": 1.5}, "crop_min"),
    ({"warmup_epochs": -1}, "warmup_epochs"), ({"selection": "best"}, "selection"), ({"seed": "1"}, "seed"),
    ({"eval_batch_size": 0}, "eval_batch_size"), ({"weight_decay": -1.0}, "weight_decay"),
])
def test_train_config_refuses_bad_values_naming_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**bad)


def test_train_config_accepts_the_edges():
    cfg = TrainConfig(epochs=1, shots=0, crop_min=1.0, warmup_epochs=0, warmup_lr=0.0, momentum=0.0,
                      selection="last")
    assert (cfg.epochs, cfg.shots, cfg.selection) == (1, 0, "last")


def test_model_selection_rules():
    history = [{"epoch": 0, "val_accuracy": 50.0}, {"epoch": 1, "val_accuracy": 80.0},
               {"epoch": 2, "val_accuracy": 80.0}, {"epoch": 3, "val_accuracy": 60.0}]
    assert model_selection(history, "best_val") == {"rule": "best_val", "epoch": 1, "val_accuracy": 80.0}
    assert model_selection(history, "last") == {"rule": "last", "epoch": 3}
    plain = [{"epoch": 0}, {"epoch": 1}]
    assert model_selection(plain, "best_val") == {"rule": "last", "epoch": 1, "requested": "best_val",
                                                   "reason": "no validation images"}


def _ctx_after_each_epoch(learner):
    """on_step callback recording the context after the last step of every epoch."""
    snapshots = {}

    def record(report):
        if report.step == report.steps_per_epoch - 1:
            snapshots[report.epoch] = learner.ctx.detach().clone()
    return snapshots, record


@pytest.mark.parametrize("selection,kept", [("best_val", 1), ("last", 3)])
def test_selection_keeps_the_chosen_epochs_prompts(tiny_backbone, images, monkeypatch, selection, kept):
    scores = iter([50.0, 80.0, 80.0, 60.0])  # epoch 1 is best; epoch 2 ties it and must not replace it
    monkeypatch.setattr(train_module, "_validation_accuracy", lambda *args: next(scores))
    learner = fresh(tiny_backbone)
    snapshots, record = _ctx_after_each_epoch(learner)
    cfg = TrainConfig(epochs=4, warmup_epochs=0, lr=0.5, seed=2, selection=selection)
    history = train_prompts(learner, images["train"], cfg, DaptConfig(), val_samples=images["val"],
                            on_step=record, progress=False)
    assert len(snapshots) == 4 and (snapshots[1] - snapshots[3]).abs().max() > 1e-4
    assert torch.equal(learner.ctx.detach(), snapshots[kept])
    assert model_selection(history, selection)["epoch"] == kept


def test_best_val_scores_are_the_real_validation_accuracy(tiny_backbone, images):
    learner = fresh(tiny_backbone)
    cfg = TrainConfig(epochs=3, warmup_epochs=0, lr=0.5, seed=4)
    history = train_prompts(learner, images["train"], cfg, DaptConfig(), val_samples=images["val"], progress=False)
    assert [h["epoch"] for h in history] == [0, 1, 2] and all("val_accuracy" in h for h in history)
    selected = model_selection(history, "best_val")
    assert evaluate(learner, images["val"])["accuracy"] == selected["val_accuracy"]


def test_best_val_without_validation_images_keeps_the_last_epoch(tiny_backbone, images, caplog):
    learner = fresh(tiny_backbone)
    snapshots, record = _ctx_after_each_epoch(learner)
    with caplog.at_level(logging.WARNING, logger="dapt_core.train"):
        history = train_prompts(learner, images["train"], TrainConfig(epochs=2, seed=1), DaptConfig(),
                                on_step=record, progress=False)
    assert "no validation images" in caplog.text
    assert torch.equal(learner.ctx.detach(), snapshots[1])
    assert model_selection(history, "best_val")["rule"] == "last"


def _interrupted_state(backbone, samples, cfg, path, **kwargs):
    """Runs until the second epoch starts, then cancels: ``path`` holds the state after epoch 1."""
    cancel = threading.Event()

    def stop(report):
        if report.epoch == 1:
            cancel.set()
    with pytest.raises(TrainingCancelled):
        train_prompts(fresh(backbone), samples, cfg, DaptConfig(), state_path=path, on_step=stop, cancel=cancel,
                      progress=False, **kwargs)
    assert path.exists()


def test_resuming_another_run_is_refused_naming_the_fields(tiny_backbone, images, tmp_path):
    state = tmp_path / "run.state.pt"
    cfg = TrainConfig(epochs=3, seed=3, lr=0.01)
    _interrupted_state(tiny_backbone, images["train"], cfg, state, run_info={"shots": 3})
    before = state.read_bytes()
    other = TrainConfig(epochs=4, seed=4, lr=0.01)
    with pytest.raises(RunMismatchError) as err:
        train_prompts(fresh(tiny_backbone), images["train"], other, DaptConfig(), state_path=state,
                      run_info={"shots": 2}, progress=False)
    message = str(err.value)
    assert "train.seed: 3 -> 4" in message and "train.epochs: 3 -> 4" in message and "run.shots: 3 -> 2" in message
    assert "train.lr" not in message and "3 field(s)" in message and "restart" in message
    with pytest.raises(RunMismatchError, match="train_images: 9 images"):
        train_prompts(fresh(tiny_backbone), images["train"][:6], cfg, DaptConfig(), state_path=state,
                      run_info={"shots": 3}, progress=False)
    with pytest.raises(RunMismatchError, match="dapt.cue"):
        train_prompts(fresh(tiny_backbone), images["train"], cfg, DaptConfig(cue="gradcam"), state_path=state,
                      run_info={"shots": 3}, progress=False)
    assert state.read_bytes() == before  # a refused run changes nothing


def test_restart_starts_over_and_equals_a_fresh_run(tiny_backbone, images, tmp_path):
    state = tmp_path / "run.state.pt"
    _interrupted_state(tiny_backbone, images["train"], TrainConfig(epochs=3, seed=3), state)
    other = TrainConfig(epochs=2, seed=5, lr=0.02)
    reference = fresh(tiny_backbone)
    train_prompts(reference, images["train"], other, DaptConfig(), progress=False)
    restarted = fresh(tiny_backbone)
    history = train_prompts(restarted, images["train"], other, DaptConfig(), state_path=state, restart=True,
                            progress=False)
    assert [h["epoch"] for h in history] == [0, 1]
    assert torch.equal(restarted.ctx, reference.ctx)


def test_resume_with_best_val_matches_an_uninterrupted_run(tiny_backbone, images, tmp_path):
    cfg = TrainConfig(epochs=3, warmup_epochs=0, lr=0.5, seed=6)
    reference = fresh(tiny_backbone)
    expected = train_prompts(reference, images["train"], cfg, DaptConfig(), val_samples=images["val"],
                             progress=False)
    state = tmp_path / "run.state.pt"
    _interrupted_state(tiny_backbone, images["train"], cfg, state, val_samples=images["val"])
    resumed = fresh(tiny_backbone)
    history = train_prompts(resumed, images["train"], cfg, DaptConfig(), val_samples=images["val"],
                            state_path=state, progress=False)
    assert [h["val_accuracy"] for h in history] == [h["val_accuracy"] for h in expected]
    assert model_selection(history, "best_val") == model_selection(expected, "best_val")
    assert torch.allclose(resumed.ctx, reference.ctx, atol=1e-6)


def test_a_state_file_without_fingerprint_is_refused(tiny_backbone, images, tmp_path):
    state = tmp_path / "old.state.pt"
    learner = fresh(tiny_backbone)
    torch.save({"learner": learner.state_dict(), "optimizer": {}, "epoch": 0, "history": [],
                "rng": torch.get_rng_state()}, state)
    with pytest.raises(RunMismatchError, match="does not say which run"):
        train_prompts(learner, images["train"], TrainConfig(epochs=2), DaptConfig(), state_path=state,
                      progress=False)


def test_the_benchmark_and_the_app_check_settings_with_the_same_config_classes():
    from dapt_core.app_support.training import TrainRequest
    from dapt_core.experiments.background_shift import BenchConfig

    for bad, field in (({"lr": 0.0}, "lr"), ({"batch_size": 0}, "batch_size"), ({"switch_epoch": -1}, "switch_epoch"),
                       ({"crop_min": 0.0}, "crop_min")):
        with pytest.raises(ValueError, match=field):
            BenchConfig(**bad)
    request = TrainRequest(source="synthetic", learner="coop", cue="off", shots=1, epochs=1, name="x",
                           train={"batch_size": 0})
    with pytest.raises(ValueError, match="batch_size"):
        request.validate()


def test_few_shot_validation_draws_min_shots_4_per_class(images):
    from collections import Counter

    from dapt_core.train import few_shot_validation

    pool = images["train"] + images["val"]  # five images per class
    assert Counter(s.label for s in few_shot_validation(pool, 1, seed=1)) == {0: 1, 1: 1, 2: 1}
    assert Counter(s.label for s in few_shot_validation(pool, 16, seed=1)) == {0: 4, 1: 4, 2: 4}
    assert few_shot_validation(pool, 0, seed=1) == pool


def test_an_app_run_records_which_epoch_it_kept(tmp_path, tiny_backbone):
    from dapt_core.app_support.catalog import PromptCatalog
    from dapt_core.app_support.training import TrainRequest, run_training
    from dapt_core.checkpoint import read_info

    catalog = PromptCatalog(tiny_backbone, tmp_path / "none", tmp_path / "user")
    request = TrainRequest(source="synthetic", learner="coop", cue="off", shots=1, epochs=2, name="run",
                           synth_test_per_class=1)
    result = run_training(request, tiny_backbone, catalog, tmp_path / "work")
    assert read_info(result.path).meta["train"]["selected"] == {"rule": "last", "epoch": 1, "requested": "best_val",
                                                                "reason": "no validation images"}


def test_coop_dapt_epochs_with_only_the_triplet_train_as_plain_coop(tiny_backbone, images, monkeypatch, caplog):
    """Over CoOp the triplet term's gradient is zero: epochs before the official switch learn exactly what
    plain CoOp learns, without refreshing the Grad-CAM cue or reading a mask; from the switch on the cue is
    refreshed once per epoch."""
    caplog.set_level(logging.INFO, logger="dapt_core.train")
    refreshed = []
    original = train_module.refresh_gradcam_masks
    monkeypatch.setattr(train_module, "refresh_gradcam_masks",
                        lambda learner, dataset, *a, **k: refreshed.append(dataset.epoch) or original(
                            learner, dataset, *a, **k))
    cfg = TrainConfig(epochs=3, batch_size=3, selection="last", seed=4)
    plain = fresh(tiny_backbone)
    train_prompts(plain, images["train"], cfg, DaptConfig(cue="off"), progress=False)
    dapt = fresh(tiny_backbone)
    history = train_prompts(dapt, images["train"], cfg, DaptConfig(cue="gradcam", switch_epoch=7), progress=False)
    assert refreshed == [] and all("triplet" not in h for h in history)
    assert torch.equal(dapt.ctx, plain.ctx)
    switched = fresh(tiny_backbone)
    history = train_prompts(switched, images["train"], cfg, DaptConfig(cue="gradcam", switch_epoch=1),
                            progress=False)
    assert refreshed == [1, 2] and [("background" in h) for h in history] == [False, True, True]
    assert not torch.equal(switched.ctx, plain.ctx)
    said = [r.getMessage() for r in caplog.records if "run as plain coop" in r.getMessage()]
    assert len(said) == 2 and "epoch(s) 1, 2, 3, where" in said[0] and "epoch(s) 1, where" in said[1]
    caplog.clear()
    train_prompts(fresh(tiny_backbone), images["train"], replace(cfg, epochs=1), DaptConfig(cue="gradcam",
                  schedule="joint"), progress=False)
    assert not [r for r in caplog.records if "run as plain" in r.getMessage()]  # joint: the triplet is kept
