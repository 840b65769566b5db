"""The background-shift benchmark on the web world: its task on disk, the group and shortcut metrics, the new
settings, intervals over seeds, per-scene values and the run end to end on synth-web."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from dapt_core import paths
from dapt_core.checkpoint import load_prompt_set, read_info
from dapt_core.cli import main
from dapt_core.experiments.background_shift import BenchConfig, bench_task, build_task, load_task, run_bench
from dapt_core.experiments.background_shift_metrics import shortcut_rate, worst_group_accuracy
from dapt_core.experiments.background_shift_report import read_result, table_columns, write_report
from dapt_core.experiments.background_shift_results import (
    aggregate,
    attach_per_scene,
    quantile_picks,
    scenes_at_quantiles,
    split_per_scene,
    t_quantile,
)
from dapt_core.experiments.background_shift_tasks import from_spurious
from dapt_core.experiments.bias_suite import run_suite
from dapt_core.experiments.bias_worlds import build as build_world
from dapt_core.metric_units import FRACTION, PERCENT, metric_unit
from dapt_core.world.web import HOME_BACKGROUNDS

WEB_WEIGHTS = paths.CHECKPOINT_DIR / "synth-web.safetensors"
needs_web = pytest.mark.skipif(not WEB_WEIGHTS.is_file(), reason="checkpoints/synth-web.safetensors is not on this "
                                                                  "machine")
# the rehomed task's permutation needs a few classes; 8 keep a run to seconds
WEB = {"world": "web", "task_variant": "rehomed", "n_classes": 8, "device": "cpu"}
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def web_backbone():
    if not WEB_WEIGHTS.is_file():
        pytest.skip("checkpoints/synth-web.safetensors is not on this machine")
    from dapt_core.backbones import load_backbone

    return load_backbone("synth-web", device="cpu")


def test_web_task_reads_back_with_its_labels_images_and_masks(tmp_path):
    cfg = BenchConfig(**WEB, shots=(2,), seeds=(3,), n_test=1)
    task = bench_task(cfg, 3, 2)
    assert list(task.classnames) != sorted(task.classnames)  # a folder-order labelling would differ
    assert any(task.homes[c] != HOME_BACKGROUNDS[c] for c in task.classnames)  # the rehomed variant's own homes
    data = load_task(task, tmp_path / "task")
    for split, samples in data.samples.items():
        scenes = data.scenes[split]
        assert len(samples) == len(scenes.labels) == 8 * (2 if split == "train" else 1)
        assert [s.label for s in samples] == scenes.labels.tolist()
        assert [s.classname for s in samples] == [task.classnames[i] for i in scenes.labels]
        assert [s.path.parent.name for s in samples] == [task.classnames[i] for i in scenes.labels]
        for i, sample in enumerate(samples):
            assert np.array_equal(np.asarray(Image.open(sample.path).convert("RGB")), scenes.images[i])
            assert np.array_equal(data.masks[split].get(i, sample) > 0.5, scenes.masks[i])
    assert data.scenes["test_conflicting"] is task.tests["test_conflicting"]


def test_the_synth_task_converts_with_the_same_scenes_and_its_pairing_as_homes():
    cfg = BenchConfig(n_classes=4, n_test=2)
    spurious = build_task(cfg, 5, 3)
    task = from_spurious(spurious, "x")
    assert task.homes == {c: (b,) for c, b in spurious.pairing.items()}
    assert task.train.labels.tolist() == spurious.labels(spurious.train).tolist()
    conflicting = spurious.test_conflicting
    assert task.tests["test_conflicting"].backgrounds == tuple(s.background for s in conflicting)
    assert np.array_equal(task.tests["test_conflicting"].images, np.stack([s.image for s in conflicting]))
    assert np.array_equal(task.tests["test_conflicting"].masks, np.stack([s.mask for s in conflicting]))


def test_worst_group_accuracy_takes_the_weakest_class_of_either_split():
    aligned = (np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]))  # both classes 100 %
    # class 0 right once in three, class 1 always: pooled 60 %, the worst group 33.3 %
    conflicting = (np.array([0, 1, 1, 1, 1]), np.array([0, 0, 0, 1, 1]))
    assert worst_group_accuracy({"test_aligned": aligned, "test_conflicting": conflicting}) == pytest.approx(100 / 3)
    # a class only in one split makes a group there only (class 2, right half the time); predictions of a class
    # that is absent make no group
    only = (np.array([2, 0]), np.array([2, 2]))
    assert worst_group_accuracy({"test_aligned": aligned, "test_conflicting": only}) == 100.0 * 0.5
    assert worst_group_accuracy({"a": (np.array([1, 1]), np.array([0, 0]))}) == 0.0
    with pytest.raises(ValueError, match="no scenes"):
        worst_group_accuracy({"test_aligned": (np.array([], dtype=int), np.array([], dtype=int))})


def test_shortcut_rate_counts_predictions_of_a_class_at_home_on_the_background():
    classnames = ("a", "b", "c")
    homes = {"a": ("grass", "sky"), "b": ("road",), "c": ("sky", "wall")}
    backgrounds = ["grass", "road", "sky", "sand"]
    # grass -> a (a home of a: shortcut); road -> a (not: b's home); sky -> c (c's home: shortcut); sand is no
    # class's home, so it does not count
    assert shortcut_rate(np.array([0, 0, 2, 1]), backgrounds, classnames, homes) == pytest.approx(2 / 3)
    assert shortcut_rate(np.array([1, 1, 1, 0]), backgrounds, classnames, homes) == pytest.approx(1 / 3)
    assert math.isnan(shortcut_rate(np.array([0]), ["sand"], classnames, homes))
    with pytest.raises(ValueError, match="differ in length"):
        shortcut_rate(np.array([0, 1]), ["grass"], classnames, homes)


@pytest.mark.parametrize("bad,match", [
    ({"world": "mars"}, "world: unknown 'mars'"),
    ({"task_variant": "rehomed"}, "task_variant: the synth world has one task"),
    ({"world": "web", "task_variant": "elsewhere"}, "task_variant: unknown 'elsewhere'"),
    ({"world": "web", "n_classes": 25}, r"n_classes: must lie in \[2, 24\] for the web world"),
    ({"n_classes": 12}, r"n_classes: must lie in \[2, 11\] for the synth world"),
    ({"world": "web", "object_radius": (0.1, 0.2)}, "object_radius: a synth-world setting"),
    ({"cam_methods": ("gradcam", "saliency")}, "cam_methods: need one or more distinct"),
    ({"cam_methods": ("gradcam", "gradcam")}, "cam_methods: need one or more distinct"),
    ({"cam_methods": ()}, "cam_methods: need one or more distinct"),
    ({"suite_per_class": -1}, "suite_per_class: expected an integer >= 0"),
    ({"suite_per_class": True}, "suite_per_class: expected an integer >= 0"),
])
def test_new_settings_are_checked_with_a_clear_error(bad, match):
    with pytest.raises(ValueError, match=match):
        BenchConfig(**bad)


def test_each_world_takes_its_own_backbone_and_coop_options():
    assert BenchConfig().backbone == "synth-mini" and BenchConfig(world="web").backbone == "synth-web"
    assert BenchConfig(world="web", backbone="tiny-vit").backbone == "tiny-vit"
    from dapt_core.experiments.background_shift import METHODS

    plain, csc = BenchConfig(), BenchConfig(coop_class_specific=True)
    assert plain.learner_options(METHODS["coop"]) == {"ctx_init": "a photo of a"}
    assert csc.learner_options(METHODS["zero-shot"]) == {"ctx_init": "a photo of a", "class_specific": True}
    assert csc.learner_options(METHODS["maple"]) == {}
    two = BenchConfig(cam_methods=("gradcam++", "gradcam"))
    assert two.attention_key("pointing_game", "gradcam++") == "pointing_game"
    assert two.attention_key("pointing_game", "gradcam") == "pointing_game@gradcam"


def test_the_command_line_offers_the_library_worlds_and_variants():
    from dapt_core.cli.bench import TASK_VARIANTS, WORLDS
    from dapt_core.experiments.background_shift import WORLDS as LIBRARY_WORLDS
    from dapt_core.experiments.bias_worlds import TASK_VARIANTS as LIBRARY_VARIANTS

    assert (WORLDS, TASK_VARIANTS) == (LIBRARY_WORLDS, LIBRARY_VARIANTS)


def test_t_quantiles_and_the_intervals_over_seeds():
    assert [round(t_quantile(df), 3) for df in (1, 2, 4, 10)] == [12.706, 4.303, 2.776, 2.228]
    records = [{"shots": 1, "method": "coop", "seed": s, "conflicting_acc": v} for s, v in ((1, 1.0), (2, 3.0))]
    stats = aggregate(records)["1"]["coop"]["conflicting_acc"]
    # mean 2, sample std sqrt(2): half width t(1) * sqrt(2) / sqrt(2)
    assert stats["ci95"] == pytest.approx([2.0 - 12.7062, 2.0 + 12.7062], abs=1e-3)
    assert aggregate(records[:1])["1"]["coop"]["conflicting_acc"]["ci95"] is None
    with pytest.raises(ValueError, match="df"):
        t_quantile(0)


def test_scenes_at_quantiles_pick_real_scenes_of_the_difference():
    assert quantile_picks([0.3, float("nan"), 0.1, 0.2, 0.5, 0.4], (0.0, 0.5, 0.9, 1.0)) == [2, 0, 4, 4]
    per_scene = {"base": {"label": [0, 1, 2], "background": ["sky", "road", "wall"],
                          "object_attention": [0.2, 0.5, 0.1]},
                 "dapt": {"label": [0, 1, 2], "background": ["sky", "road", "wall"],
                          "object_attention": [0.6, 0.4, 0.3]}}
    result = {"runs": [{"shots": 4, "seed": 2, "method": m, "per_scene": v} for m, v in per_scene.items()]}
    picks = scenes_at_quantiles(result, "base", "dapt", 4, 2)  # differences +0.4, -0.1, +0.2
    assert [(p["index"], p["background"]) for p in picks] == [(2, "wall"), (0, "sky")]
    assert picks[1]["difference"] == pytest.approx(0.4) and picks[1]["base"] == 0.2
    with pytest.raises(ValueError, match="no per-scene values"):
        scenes_at_quantiles(result, "base", "dapt", 16, 2)


def test_per_scene_values_live_beside_the_json_and_come_back(tmp_path):
    runs = [{"shots": 1, "seed": 1, "method": "coop", "per_scene": {"object_attention": [0.5, float("nan")]}},
            {"shots": 1, "seed": 1, "method": "zero-shot"}]
    main_part, lines = split_per_scene({"runs": runs})
    assert main_part["runs"] == [{"shots": 1, "seed": 1, "method": "coop"}, runs[1]] and len(lines) == 1
    back = attach_per_scene(main_part, lines)
    assert back["runs"][0]["per_scene"]["object_attention"][0] == 0.5 and "per_scene" not in back["runs"][1]
    with pytest.raises(ValueError, match="does not hold"):
        attach_per_scene({"runs": runs[1:]}, lines)


def test_units_of_the_new_columns():
    assert metric_unit("worst_group_acc") == PERCENT and metric_unit("bg_gap") == PERCENT
    assert metric_unit("object_attention@gradcam++") == FRACTION and metric_unit("unknown@gradcam") is None
    for key, title, _, _ in table_columns({"cam_methods": ["gradcam", "gradcam++"]}):
        assert metric_unit(key) == (PERCENT if "%" in title else FRACTION), key


@needs_web
def test_web_run_records_groups_shortcuts_attention_per_map_and_the_suite(web_backbone, tmp_path):
    cfg = BenchConfig(**WEB, shots=(1,), seeds=(1,), epochs=1, n_test=1, methods=("zero-shot", "coop"),
                      coop_class_specific=True, cam_methods=("gradcam", "gradcam++"), suite_per_class=2)
    result = run_bench(cfg, backbone=web_backbone)
    zero, coop = result["runs"]
    for run in (zero, coop):
        assert run["worst_group_acc"] <= min(run["aligned_acc"], run["conflicting_acc"])
        scenes = run["per_scene"]
        assert len(scenes["label"]) == len(scenes["object_attention@gradcam++"]) == len(scenes["pointing_game"]) == 8
        assert run["pointing_game@gradcam++"] == pytest.approx(np.mean(scenes["pointing_game@gradcam++"]))
        hits = np.mean(np.array(scenes["prediction"]) == np.array(scenes["label"]))
        assert run["conflicting_acc"] == pytest.approx(100.0 * hits, abs=1e-3)
    # zero-shot (CoOp from "a photo of a", untrained) in the suite is zero-shot CLIP in the suite
    alone = run_suite(web_backbone, build_world("web", 1, 8), 2, 1)
    assert zero["bg_gap"] == alone["bg_gap"]
    assert result["settings"]["learners"]["coop"]["options"]["class_specific"] is True
    assert result["summary"]["1"]["coop"]["object_attention@gradcam++"]["n"] == 1
    paths_written = write_report(result, tmp_path)
    assert "per_scene" not in json.loads(paths_written["json"].read_text())["runs"][0]
    assert read_result(paths_written["json"])["runs"][1]["per_scene"] == coop["per_scene"]
    report = paths_written["markdown"].read_text()
    assert "# Background-shift benchmark on the web world (rehomed task)" in report
    assert "object attention, gradcam++ (0-1)" in report and "worst group acc %" in report


@needs_web
def test_cli_web_run_saves_one_tasks_prompt_sets(tmp_path, capsys, web_backbone):
    code = main(["bench", "synth", "--world", "web", "--task-variant", "rehomed", "--coop-class-specific",
                 "--cam-methods", "gradcam", "gradcam++", "--device", "cpu", "--shots", "1", "--n-seeds", "1",
                 "--epochs", "1", "--n-test", "1", "--n-classes", "8", "--suite-per-class", "1",
                 "--methods", "coop,coop+dapt-mask", "--threads", "1", "--out", str(tmp_path), "--name", "web",
                 "--save-prompts", str(tmp_path / "prompts")])
    assert code == 0
    assert set(json.loads(capsys.readouterr().out.strip().splitlines()[-1])) == {"coop", "coop+dapt-mask"}
    assert len((tmp_path / "web_scenes.jsonl").read_text().splitlines()) == 2
    info = read_info(tmp_path / "prompts" / "web-rehomed-coop-dapt.safetensors")
    assert info.label == "CoOp + DAPT (mask)" and info.meta["learner_options"]["class_specific"] is True
    task = bench_task(BenchConfig(**WEB, n_test=1), 1, 1)
    assert info.meta["train"]["homes"] == {c: list(b) for c, b in task.homes.items()}
    assert "rehomed web task" in info.meta["train"]["data"]
    assert {"worst_group_acc", "bg_gap", "object_attention@gradcam++"} <= set(info.meta["metrics"])
    learner = load_prompt_set(tmp_path / "prompts" / "web-rehomed-coop.safetensors", web_backbone)
    assert learner.classnames == list(task.classnames)
    # a task the run does not hold is refused before anything trains
    assert main(["bench", "synth", "--world", "web", "--task-variant", "rehomed", "--device", "cpu", "--shots", "1",
                 "--n-seeds", "1", "--n-classes", "8", "--out", str(tmp_path), "--save-prompts", str(tmp_path),
                 "--save-prompts-task", "2", "1"]) == 2


def test_dapt_ablation_settings_reach_the_objective():
    from dapt_core.experiments.background_shift import BenchConfig
    from dapt_core.objective import DaptConfig

    official = BenchConfig().dapt("mask")
    assert official == DaptConfig(cue="mask", schedule="official", switch_epoch=7)
    ablated = BenchConfig(detach_background_view=True, dapt_weights=(0.0, 0.2, 0.4), schedule="joint").dapt("gradcam")
    assert (ablated.detach_background_view, ablated.triplet_weight, ablated.foreground_weight,
            ablated.background_weight, ablated.schedule, ablated.cue) == (True, 0.0, 0.2, 0.4, "joint", "gradcam")


def test_bench_command_passes_the_ablation_flags(monkeypatch):
    from dapt_core.cli import bench as bench_cli
    from dapt_core.cli import build_parser

    args = build_parser().parse_args(["bench", "synth", "--world", "web", "--detach-background-view",
                                      "--dapt-weights", "0", "0.1", "0.5"])
    options = bench_cli._options(args)
    assert options["detach_background_view"] is True and options["dapt_weights"] == (0.0, 0.1, 0.5)
    plain = bench_cli._options(build_parser().parse_args(["bench", "synth"]))
    assert plain["detach_background_view"] is False and plain["dapt_weights"] is None


def test_each_world_has_its_own_readme_block():
    from dapt_core.experiments.background_shift_report import README_MARKERS, WEB_README_MARKERS, readme_markers

    assert readme_markers({"config": {"world": "web"}}) == WEB_README_MARKERS
    assert readme_markers({"config": {"world": "synth"}}) == readme_markers({"config": {}}) == README_MARKERS
    assert WEB_README_MARKERS != README_MARKERS


def test_paired_difference_is_dapt_minus_base_on_the_seeds_both_have():
    from dapt_core.experiments.background_shift_results import paired_difference, t_quantile

    base = {1: {"x": 10.0}, 2: {"x": 20.0}, 3: {"x": 30.0}, 4: {"x": 0.0}}
    dapt = {1: {"x": 11.0}, 2: {"x": 23.0}, 3: {"x": 32.0}, 5: {"x": 99.0}}  # seeds 4 and 5: one side only
    found = paired_difference(base, dapt, "x")
    assert found["n"] == 3 and found["mean"] == pytest.approx(2.0) and found["std"] == pytest.approx(1.0)
    half = t_quantile(2) / 3 ** 0.5
    assert found["ci95"] == pytest.approx([2.0 - half, 2.0 + half])
    dapt[3]["x"] = None  # a seed without a value on one side is left out
    assert paired_difference(base, dapt, "x")["n"] == 2
    assert paired_difference(base, {7: {"x": 1.0}}, "x") is None
