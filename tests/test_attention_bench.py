"""The attention benchmark's engine on a tiny random backbone: its scenes, its per-scene numbers (against the
metric functions called directly), its seed summary and its report files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dapt_core.attention.cam import compute_cams
from dapt_core.attention.faithfulness import curve_auc, perturbation_curve
from dapt_core.attention.metrics import object_share, pointing_game, top_k_intersection
from dapt_core.checkpoint import save_prompt_set
from dapt_core.experiments.attention_bench import (
    AttentionBenchConfig,
    _model_input,
    conflicting_scenes,
    measure,
    run_attention_bench,
    summarise,
    write_report,
)
from dapt_core.experiments.attention_bench_report import best_method, method_means
from dapt_core.learners import build_learner
from dapt_core.world.shapes import OBJECT_CLASSES

CLASSES = list(OBJECT_CLASSES[:3])
PAIRING = {CLASSES[0]: "grass", CLASSES[1]: "sky", CLASSES[2]: "water"}


def test_conflicting_scenes_avoid_the_paired_background_and_follow_the_seed():
    scenes = conflicting_scenes(4, CLASSES, PAIRING, per_class=12, size=32)
    assert [s.object for s in scenes] == [c for c in CLASSES for _ in range(12)]
    assert all(s.background != PAIRING[s.object] for s in scenes)
    # cycled: the 10 other backgrounds each appear once before any repeats
    assert len({s.background for s in scenes[:10]}) == 10
    again = conflicting_scenes(4, CLASSES, PAIRING, per_class=12, size=32)
    other = conflicting_scenes(5, CLASSES, PAIRING, per_class=12, size=32)
    assert all(np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) for a, b in zip(scenes, again))
    assert not all(np.array_equal(a.image, b.image) for a, b in zip(scenes, other))
    with pytest.raises(ValueError, match="no background for"):
        conflicting_scenes(4, CLASSES, {CLASSES[0]: "grass"}, per_class=1, size=32)


def test_summary_means_and_lift_by_hand():
    per_scene = {"pointing": np.array([1.0, 0.0, 1.0, 1.0]), "energy_share": np.array([0.6, np.nan, 0.2, 0.4]),
                 "area_share": np.array([0.1, 0.2, 0.2, 0.1]), "top_k": np.array([0.5, 0.5, 1.0, 0.0]),
                 "deletion_auc": np.array([0.1, 0.3, 0.2, 0.2]), "insertion_auc": np.array([0.9, 0.7, 0.8, 0.8]),
                 "correct": np.array([1.0, 1.0, 0.0, 1.0]), "seconds_per_map": np.array([0.02])}
    found = summarise(per_scene)
    assert found["pointing"] == 0.75 and found["accuracy"] == 0.75
    assert found["energy_share"] == pytest.approx(0.4)  # the NaN (an all-zero map) is left out
    assert found["area_share"] == pytest.approx(0.15)
    assert found["lift"] == pytest.approx(0.4 / 0.15)
    assert found["top_k"] == 0.5 and found["deletion_auc"] == pytest.approx(0.2)


def test_measure_equals_the_metric_functions_called_directly(tiny_backbone):
    torch.manual_seed(0)
    learner = build_learner("maple", tiny_backbone, CLASSES)
    with torch.no_grad():
        text = learner.text_features()
    scenes = conflicting_scenes(1, CLASSES, PAIRING, per_class=2, size=32)
    labels = [CLASSES.index(s.object) for s in scenes]
    cfg = AttentionBenchConfig(backbone="tiny-vit", methods=("relevance",), steps=3, batch_size=8)
    found = measure(learner, text, scenes, labels, "relevance", cfg)
    images = _model_input(scenes, tiny_backbone)
    cams = compute_cams(learner, images, labels, method="relevance", text_features=text)

    def probability(target):
        def score(batch):
            with torch.no_grad():
                return learner(torch.from_numpy(batch), text).softmax(-1)[:, target].numpy()
        return score

    for i, (scene, label) in enumerate(zip(scenes, labels)):
        assert found["pointing"][i] == float(pointing_game(cams[i], scene.mask))
        assert found["energy_share"][i] == pytest.approx(object_share(cams[i], scene.mask))
        assert found["area_share"][i] == pytest.approx(scene.mask.mean())
        assert found["top_k"][i] == top_k_intersection(cams[i], scene.mask)
        image = images[i].numpy()
        for key, mode in (("deletion_auc", "deletion"), ("insertion_auc", "insertion")):
            expected = curve_auc(perturbation_curve(probability(label), image, cams[i], mode, steps=3))
            assert found[key][i] == pytest.approx(expected, abs=1e-4)
    with torch.no_grad():
        predicted = learner(images, text).argmax(-1).numpy()
    np.testing.assert_array_equal(found["correct"], (predicted == np.array(labels)).astype(float))


def test_run_summary_and_report(tiny_backbone, tmp_path):
    paths = []
    for kind in ("coop", "maple"):
        torch.manual_seed(1)
        path = tmp_path / f"tiny-{kind}.safetensors"
        save_prompt_set(build_learner(kind, tiny_backbone, CLASSES), path)
        paths.append(str(path))
    cfg = AttentionBenchConfig(backbone="tiny-vit", prompt_sets=tuple(paths), methods=("gradcam", "legrad"),
                               seeds=(1, 2), per_class=1, steps=2, device="cpu", pairing=PAIRING)
    result = run_attention_bench(cfg, progress=False)
    assert result["n_scenes"] == 3 and list(result["prompt_sets"]) == ["tiny-coop", "tiny-maple"]
    for name in result["prompt_sets"]:
        for method in cfg.methods:
            seeds = [result["per_seed"][s][name][method]["pointing"] for s in ("1", "2")]
            mean, std = result["summary"][name][method]["pointing"]
            assert mean == pytest.approx(np.mean(seeds), abs=1e-4) and std == pytest.approx(np.std(seeds), abs=1e-4)
    means = method_means(result)
    lifts = [np.mean([result["per_seed"][s][n]["legrad"]["lift"] for n in result["prompt_sets"]]) for s in ("1", "2")]
    assert means["legrad"]["lift"][0] == pytest.approx(np.mean(lifts), abs=1e-4)
    assert best_method(result) == max(means, key=lambda m: (means[m]["pointing"][0], means[m]["lift"][0]))
    written = write_report(result, tmp_path / "out", stem="bench")
    assert json.loads(open(written["json"]).read())["summary"] == result["summary"]
    text = open(written["md"]).read()
    assert "| tiny-maple | legrad |" in text and "![" in text
    assert f"Best by pointing game: **{best_method(result)}**" in text
    assert open(written["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="methods: unknown"):
        AttentionBenchConfig(methods=("gradcam", "saliency"))
    with pytest.raises(ValueError, match="per_class"):
        AttentionBenchConfig(per_class=0)
    with pytest.raises(ValueError, match="top_k"):
        AttentionBenchConfig(top_k=0)
