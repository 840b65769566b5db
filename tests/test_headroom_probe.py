"""The headroom probe: the linear probe by value on hand-made features, its seed, the command on a tiny model."""

import json

import numpy as np
import pytest
import torch

from dapt_core.cli import main
from dapt_core.experiments.headroom_probe import ProbeConfig, fit_probe, probe_accuracy, probe_seed


def test_probe_bias_alone_learns_the_class_frequencies():
    # all-zero features: only the (unregularised) bias can fit, and its softmax is the label frequencies
    weight, bias = fit_probe(torch.zeros(8, 3), np.array([0, 0, 0, 0, 0, 0, 1, 2]), 3)
    assert torch.softmax(bias, 0).tolist() == pytest.approx([0.75, 0.125, 0.125], abs=1e-4)
    assert weight.abs().max().item() < 1e-6


@pytest.mark.parametrize("c", [1.0, 0.25])
def test_probe_weights_solve_the_l2_regularised_optimum(c):
    # x = +1 (label 1), x = -1 (label 0): by symmetry w_1 = -w_0 = w and the bias is 0; the optimum of
    # 2 log(1 + exp(-2w)) + w^2 / c is the fixed point w = 2 c sigmoid(-2w)
    weight, bias = fit_probe(torch.tensor([[1.0], [-1.0]]), np.array([1, 0]), 2, ProbeConfig(c=c))
    w = 0.0
    for _ in range(200):
        w = 2 * c / (1 + np.exp(2 * w))
    assert weight[:, 0].tolist() == pytest.approx([-w, w], abs=1e-4)
    assert bias.abs().max().item() < 1e-5
    assert probe_accuracy(weight, bias, torch.tensor([[0.5], [-2.0], [3.0]]), np.array([1, 0, 0])) == \
        pytest.approx(200 / 3)


def test_probe_separates_separable_classes():
    rng = np.random.default_rng(0)
    centres = np.eye(4, 6)
    labels = np.repeat(np.arange(4), 10)
    features = torch.tensor(centres[labels] + 0.05 * rng.standard_normal((40, 6)), dtype=torch.float32)
    weight, bias = fit_probe(features, labels, 4, ProbeConfig(c=10.0))
    assert probe_accuracy(weight, bias, features, labels) == 100.0
    assert probe_accuracy(weight, bias, features, (labels + 1) % 4) == 0.0


def test_probe_seed_is_a_stream_of_its_own():
    assert probe_seed(7) == probe_seed(7) and probe_seed(7) != probe_seed(8)
    assert probe_seed(7) not in (7, 8) and 0 <= probe_seed(7) < 2**31


def test_headroom_command_on_a_tiny_model(tmp_path, capsys):
    argv = ["bench", "headroom", "--backbone", "tiny-vit", "--n-classes", "3", "--shots", "2", "--n-test", "2",
            "--epochs", "2", "--probe-per-class", "3", "--seed", "5", "--out", str(tmp_path)]
    assert main(argv) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((tmp_path / "headroom_probe_tiny-vit_seed5.json").read_text())
    assert {k: v for k, v in saved.items() if k != "command"} == line
    assert saved["command"] == ("python -m dapt_core bench headroom --backbone tiny-vit --world synth --seed 5 "
                                "--per-class 50 --shots 2 --n-test 2 --epochs 2 --probe-per-class 3 --n-classes 3")
    assert len(line["coop"]["loss_per_epoch"]) == 2
    splits = ("test_aligned", "test_balanced", "test_conflicting")
    for key in ("zero_shot", "coop", "probe_task_shots", "probe_balanced"):
        for split in splits:  # 3 classes x 2 scenes per split: every accuracy is a multiple of 100 / 6
            assert line[key][split] * 6 / 100 == pytest.approx(round(line[key][split] * 6 / 100), abs=0.01)
    report = (tmp_path / "headroom_probe_tiny-vit_seed5.md").read_text()
    assert "| linear probe on 3 balanced scenes per class |" in report and saved["command"] in report
    assert main(argv[:-2] + ["--probe-per-class", "0", "--out", str(tmp_path / "no")]) == 2
    assert not (tmp_path / "no").exists()
    assert main(argv[:-2] + ["--out", str(tmp_path / "named"), "--name", "p0.5_seed5"]) == 0
    assert sorted(p.name for p in (tmp_path / "named").iterdir()) == ["p0.5_seed5.json", "p0.5_seed5.md"]


def test_headroom_command_trains_maple_against_the_same_zero_shot(tmp_path, capsys):
    argv = ["bench", "headroom", "--backbone", "tiny-vit", "--n-classes", "3", "--shots", "1", "--n-test", "2",
            "--epochs", "1", "--probe-per-class", "2", "--seed", "6", "--out", str(tmp_path)]
    assert main(argv) == 0
    coop = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(argv + ["--learner", "maple"]) == 0
    maple = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (coop["learner"], maple["learner"]) == ("coop", "maple") and "coop" not in maple
    assert maple["zero_shot"] == coop["zero_shot"]  # zero-shot is untrained CoOp whichever learner is tuned
    assert maple["probe_balanced"] == coop["probe_balanced"] and len(maple["maple"]["loss_per_epoch"]) == 1
    saved = json.loads((tmp_path / "headroom_probe_maple_tiny-vit_seed6.json").read_text())
    assert saved["command"].endswith("--probe-per-class 2 --learner maple --n-classes 3")
    report = (tmp_path / "headroom_probe_maple_tiny-vit_seed6.md").read_text()
    assert "| MaPLe, trained as the gates train CoOp |" in report and "\nMaPLe's training loss per epoch: " in report
