"""The data-efficient setting's selection, by value on hand-made features and logits."""

import hashlib
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy

from dapt_core.data.records import Sample
from dapt_core.selection import (
    SelectionConfig, SelectionError, budget, herding_order, kcenter_order, select_indices, select_samples,
    uncertainty_scores, zero_shot_inputs,
)


def line(values):
    """Points on a line, as (N, 2) features (the second coordinate is 0)."""
    return torch.tensor([[float(v), 0.0] for v in values])


def test_herding_keeps_the_running_mean_on_the_mean():
    # values 10, 2, 0, 3, 1 (rows 0..4), mean 3.2. Pick t minimises |(t+1)*3.2 - sum(picks) - x|:
    # t=0 target 3.2 -> 3 (row 3); t=1 target 6.4-3=3.4 -> 2 (row 1); t=2 target 9.6-5=4.6 -> 1 (row 4);
    # t=3 target 12.8-6=6.8 -> 10 (row 0, |3.2| beats 0's |6.8|); t=4 -> 0 (row 2)
    assert herding_order(line([10, 2, 0, 3, 1]), 5) == [3, 1, 4, 0, 2]
    assert herding_order(line([10, 2, 0, 3, 1]), 2) == [3, 1]


def test_herding_in_two_dimensions_picks_the_point_nearest_the_centroid_first():
    square = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [0.1, 0.0]])
    # centroid c = (0.02, 0): nearest (0.1, 0) (row 4); target 2c - (0.1, 0) = (-0.06, 0): the left corners
    # (rows 1, 2) are nearer than the right ones and tie (lowest row, 1); target 3c - (0.1, 0) - (-1, 1) =
    # (0.96, -1): the corner (1, -1) (row 3)
    assert herding_order(square, 3) == [4, 1, 3]


def test_kcenter_takes_the_farthest_point_each_time():
    # values 0, 1, 2, 9, 5 from row 0: farthest 9 (row 3); nearest-pick distances then 1, 2, -, 4 -> 5 (row 4);
    # then 1, min(2, 3)=2 -> 2 (row 2); then 1 (row 1)
    assert kcenter_order(line([0, 1, 2, 9, 5]), 5, first=0) == [0, 3, 4, 2, 1]
    # from row 3 (value 9): farthest 0 (row 0); then nearest-pick distances 1, 2, -, -, min(4, 5)=4 -> row 4
    assert kcenter_order(line([0, 1, 2, 9, 5]), 3, first=3) == [3, 0, 4]
    assert kcenter_order(line([0, 1, 2]), 0, first=1) == []


def test_kcenter_through_select_indices_is_seeded_and_farthest_first():
    rng = np.random.default_rng(0)
    features = torch.tensor(rng.normal(size=(12, 3)))
    labels = [0] * 12
    cfg = SelectionConfig(fraction=0.5, method="kcenter", seed=4)
    picks = select_indices(labels, cfg, features=features)
    assert picks == select_indices(labels, cfg, features=features)
    firsts = {select_indices(labels, SelectionConfig(fraction=0.5, method="kcenter", seed=s), features=features)[0]
              for s in range(8)}
    assert len(firsts) > 1  # the first pick is drawn from the seed
    dist = torch.cdist(features, features)
    for t in range(1, len(picks)):  # every later pick is a farthest point from the picks before it
        gap = dist[:, picks[:t]].min(dim=1).values
        assert float(gap[picks[t]]) == pytest.approx(float(gap.max()))


def test_uncertainty_entropy_is_the_softmax_entropy_and_picks_the_highest():
    logits = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.0, 0.0], [5.0, 0.0, 5.0], [1.0, 1.0, 0.0]])
    scores = uncertainty_scores(logits)
    reference = [scipy_entropy(torch.softmax(row.double(), 0).numpy()) for row in logits]
    assert torch.allclose(scores, torch.tensor(reference, dtype=torch.float64))
    # uniform (row 1) > two large of three (row 3) > an even two-way split (row 2) > confident (row 0)
    cfg = SelectionConfig(fraction=0.5, method="uncertainty", per_class=False)
    assert select_indices([0, 0, 1, 1], cfg, logits=logits) == [1, 3]


def test_margin_and_entropy_disagree_where_they_should():
    close_pair = [1.0, 0.9, -5.0]  # p = (0.524, 0.474, 0.001): margin 0.05, entropy 0.70, top 0.524
    spread = [1.0, 0.0, 0.0]  # p = (0.576, 0.212, 0.212): margin 0.36, entropy 0.98, top 0.576
    logits = torch.tensor([close_pair, spread])
    by = {kind: select_indices([0, 0], SelectionConfig(fraction=0.5, method="uncertainty", per_class=False,
                                                        uncertainty=kind), logits=logits)
          for kind in ("entropy", "margin", "least_confidence")}
    assert by == {"entropy": [1], "margin": [0], "least_confidence": [0]}


def test_uniform_is_seeded_and_per_class():
    labels = [0] * 10 + [1] * 20 + [2] * 6
    cfg = SelectionConfig(fraction=0.5, method="uniform", seed=7)
    picks = select_indices(labels, cfg)
    assert [sum(labels[i] == c for i in picks) for c in range(3)] == [5, 10, 3]
    assert picks == select_indices(labels, cfg)
    assert picks != select_indices(labels, SelectionConfig(fraction=0.5, method="uniform", seed=8))
    assert len(set(picks)) == len(picks)
    glob = select_indices(labels, SelectionConfig(fraction=0.5, method="uniform", seed=7, per_class=False))
    assert len(glob) == 18
    counts = {tuple(sum(labels[i] == c for i in select_indices(
        labels, SelectionConfig(fraction=0.5, method="uniform", seed=s, per_class=False))) for c in range(3))
        for s in range(10)}
    assert counts != {(5, 10, 3)}  # a global draw does not keep every class's share


def test_budget_rounds_as_deepcore_and_keeps_a_floor():
    assert [budget(n, 0.5) for n in (1, 2, 3, 5, 16)] == [round(0.5 * n) for n in (1, 2, 3, 5, 16)]
    assert budget(1, 0.05) == 0 and budget(1, 0.05, minimum=1) == 1 and budget(3, 0.05, minimum=5) == 3
    one_shot = list(range(4))
    assert len(select_indices(one_shot, SelectionConfig(fraction=0.05))) == 4
    assert select_indices(one_shot, SelectionConfig(fraction=0.05, min_per_class=0)) == []


def samples_of(counts, root=Path("/data")):
    return [Sample(root / f"c{c}" / f"{i:02d}.png", c, f"class {c}") for c, n in enumerate(counts) for i in range(n)]


def test_full_fraction_keeps_everything_and_needs_no_backbone():
    samples = samples_of([3, 4])
    for method in ("uniform", "herding", "kcenter", "uncertainty"):
        kept, record = select_samples(list(reversed(samples)), SelectionConfig(fraction=1.0, method=method))
        assert kept == samples and record["kept"] == record["of"] == 7


def test_select_samples_ignores_the_input_order_and_records_the_choice():
    samples = samples_of([8, 6, 10])
    cfg = SelectionConfig(fraction=0.3, method="uniform", seed=2)
    kept, record = select_samples(samples, cfg)
    shuffled = samples[:]
    random.Random(0).shuffle(shuffled)
    again, record_again = select_samples(shuffled, cfg)
    assert again == kept and record_again == record
    assert kept == sorted(kept, key=lambda s: (s.label, str(s.path)))
    assert record["kept_per_class"] == {"class 0": 2, "class 1": 2, "class 2": 3}
    assert record["fraction"] == 0.3 and record["method"] == "uniform" and record["seed"] == 2
    assert record["kept"] == 7 and record["of"] == 24 and len(record["kept_sha256"]) == 64


@pytest.mark.parametrize("kwargs,message", [
    ({"fraction": 0.01}, "fraction must be in"), ({"fraction": 1.5}, "fraction must be in"),
    ({"method": "random"}, "unknown selection method"), ({"uncertainty": "variance"}, "unknown uncertainty"),
    ({"min_per_class": -1}, "min_per_class"), ({"batch_size": 0}, "batch_size"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(SelectionError, match=message):
        SelectionConfig(**kwargs)


def test_methods_that_need_features_refuse_to_run_without_them():
    with pytest.raises(SelectionError, match="herding selection needs features"):
        select_indices([0, 0, 1], SelectionConfig(fraction=0.5, method="herding"))
    with pytest.raises(SelectionError, match="needs logits"):
        select_indices([0, 1], SelectionConfig(fraction=0.5, method="uncertainty"), logits=torch.zeros(3, 2))
    with pytest.raises(SelectionError, match="needs the backbone"):
        select_samples(samples_of([2, 2]), SelectionConfig(fraction=0.5, method="kcenter"))


@pytest.fixture(scope="module")
def image_samples(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(1)
    samples = []
    for c in range(2):
        (root / f"c{c}").mkdir()
        for i in range(6):
            path = root / f"c{c}" / f"{i}.png"
            Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(path)
            samples.append(Sample(path, c, ["dog", "cat"][c]))
    return samples


def test_feature_methods_run_on_the_frozen_zero_shot_model(tiny_backbone, image_samples):
    from dapt_core.constants import ZERO_SHOT_CONTEXT
    from dapt_core.learners import build_learner
    from dapt_core.train import predict

    features, logits = zero_shot_inputs(tiny_backbone, image_samples, ["dog", "cat"], batch_size=5)
    zero_shot = build_learner("coop", tiny_backbone, ["dog", "cat"], ctx_init=ZERO_SHOT_CONTEXT)
    preds, _ = predict(zero_shot, image_samples)
    assert features.shape == (12, tiny_backbone.embed_dim) and logits.shape == (12, 2)
    assert torch.allclose(features.norm(dim=1), torch.ones(12), atol=1e-5)
    assert logits.argmax(dim=1).tolist() == preds.tolist()  # the zero-shot CLIP prediction
    for method in ("herding", "kcenter", "uncertainty"):
        cfg = SelectionConfig(fraction=0.5, method=method, seed=3, batch_size=4)
        kept, record = select_samples(image_samples, cfg, backbone=tiny_backbone, classnames=["dog", "cat"])
        expected = sorted(select_indices([s.label for s in image_samples], cfg, features=features, logits=logits))
        assert kept == [image_samples[i] for i in expected]
        assert record["kept_per_class"] == {"dog": 3, "cat": 3} and record["method"] == method


# --- the train command ----------------------------------------------------------------------------------

def test_cli_choices_match_the_library():
    from dapt_core import selection
    from dapt_core.cli import train as cli_train

    assert cli_train.SELECT_METHODS == selection.SELECT_METHODS
    assert cli_train.SELECT_SCORES == selection.UNCERTAINTY_SCORES


@pytest.mark.parametrize("flags,message", [(["--select-fraction", "0.01"], "fraction must be in"),
                                           (["--select-fraction", "1.5"], "fraction must be in")])
def test_cli_refuses_bad_selection_before_loading_anything(monkeypatch, tmp_path, capsys, flags, message):
    from dapt_core.cli import main
    from dapt_core.cli import train as cli_train

    def heavy(*args, **kwargs):
        raise AssertionError("loaded data or a backbone before checking the selection flags")

    monkeypatch.setattr(cli_train, "load_backbone", heavy)
    monkeypatch.setattr(cli_train, "data_splits", heavy)
    code = main(["train", "--backbone", "tiny-vit", "--data", f"imagefolder:{tmp_path}", "--out",
                 str(tmp_path / "x.safetensors"), *flags])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_cli_trains_on_the_selected_images_and_records_them(tmp_path, capsys, monkeypatch):
    from PIL import Image

    from dapt_core import train as train_module
    from dapt_core.checkpoint import read_info
    from dapt_core.cli import main

    trained_on = []
    real_train = train_module.train_prompts

    def recording(learner, samples, *args, **kwargs):
        trained_on.append(sorted(str(s.path) for s in samples))
        return real_train(learner, samples, *args, **kwargs)

    monkeypatch.setattr(train_module, "train_prompts", recording)

    rng = np.random.default_rng(2)
    for split, n in (("train", 6), ("test", 2)):
        for name in ("red", "blue"):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray((rng.random((36, 36, 3)) * 255).astype(np.uint8)).save(
                    tmp_path / "data" / split / name / f"{i}.png")
    out = tmp_path / "p.safetensors"
    argv = ["train", "--backbone", "tiny-vit", "--device", "cpu", "--learner", "coop", "--shots", "0",
            "--epochs", "1", "--data", f"imagefolder:{tmp_path / 'data'}", "--select-fraction", "0.5",
            "--select-method", "kcenter", "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    meta = read_info(out).meta["train"]
    record = meta["data_selection"]
    assert record["method"] == "kcenter" and record["fraction"] == 0.5 and record["per_class"] is True
    assert record["kept"] == 6 and record["of"] == 12 and record["kept_per_class"] == {"blue": 3, "red": 3}
    assert len(trained_on[0]) == 6
    assert hashlib.sha256("\n".join(trained_on[0]).encode()).hexdigest() == record["kept_sha256"]
    assert main([*argv[:-1], str(tmp_path / "again.safetensors")]) == 0  # seeded: the same images again
    assert read_info(tmp_path / "again.safetensors").meta["train"]["data_selection"] == record
    assert trained_on[1] == trained_on[0]
