"""The background-shift benchmark end to end on a reduced task with the tiny random backbone."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from dapt_core.checkpoint import load_prompt_set, read_info
from dapt_core.cli import main
from dapt_core.world import OBJECT_CLASSES
from dapt_core.experiments.background_shift import (
    METHODS,
    BenchConfig,
    bench_task,
    build_task,
    load_task,
    quick_config,
    run_bench,
    train_method,
)
from dapt_core.experiments.background_shift_prompts import train_prompt_sets
from dapt_core.experiments.background_shift_results import SUMMARY_FIELDS, merge_results
from dapt_core.experiments.background_shift_report import FINDINGS_HEADING, write_examples, write_report
from dapt_core.train import predict

pytestmark = pytest.mark.usefixtures("one_thread")

REDUCED = {"backbone": "tiny-vit", "device": "cpu", "n_classes": 3, "n_test": 2, "epochs": 1}


def test_cli_quick_run_writes_report_and_json_line(tmp_path, capsys):
    out = tmp_path / "results"
    code = main(["bench", "synth", "--quick", "--backbone", "tiny-vit", "--device", "cpu", "--shots", "1",
                 "--epochs", "1", "--n-classes", "3", "--n-test", "2", "--out", str(out),
                 "--threads", "1"])
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    assert list(summary) == list(METHODS)
    for method, fields in summary.items():
        assert set(fields) == set(SUMMARY_FIELDS), method
        assert 0.0 <= fields["object_attention"] <= 1.0 and 0.0 <= fields["pointing_game"] <= 1.0
    for suffix in ("md", "png", "json"):
        assert (out / f"synth_bench_quick.{suffix}").stat().st_size > 0
    report = (out / "synth_bench_quick.md").read_text()
    assert "| coop+dapt-gradcam |" in report and FINDINGS_HEADING in report
    raw = json.loads((out / "synth_bench_quick.json").read_text())
    assert len(raw["runs"]) == len(METHODS)
    assert raw["settings"]["dapt"]["mask"]["cue"] == "mask"


def test_findings_survive_a_rerun(tmp_path, tiny_backbone):
    cfg = quick_config(shots=(1,), methods=("zero-shot", "coop"), **REDUCED)
    result = run_bench(cfg, backbone=tiny_backbone)
    paths = write_report(result, tmp_path)
    text = paths["markdown"].read_text().replace("_Not written yet", "We found X. _Not written yet")
    paths["markdown"].write_text(text)
    write_report(result, tmp_path)
    assert "We found X." in paths["markdown"].read_text()


def test_readme_command_fills_the_marked_block_only(tmp_path, tiny_backbone):
    cfg = quick_config(shots=(1,), methods=("coop", "coop+dapt-mask"), **REDUCED)
    paths = write_report(run_bench(cfg, backbone=tiny_backbone), tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- synth-bench table: start -->\nold table\n<!-- synth-bench table: end -->\noutro\n")
    assert main(["bench", "synth-readme", "--result", str(paths["json"]), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old table" not in text
    assert "| coop+dapt-mask |" in text and "| coop+dapt-mask − coop |" in text and "1 shots" in text
    # a shot count the result lacks, or a file without the markers, is refused and the file is left alone
    assert main(["bench", "synth-readme", "--result", str(paths["json"]), "--readme", str(readme),
                 "--shots", "16"]) == 2
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    assert main(["bench", "synth-readme", "--result", str(paths["json"]), "--readme", str(plain)]) == 2
    assert readme.read_text() == text and plain.read_text() == "no markers\n"


def _zero_shot_clip_predictions(backbone, classnames, samples) -> np.ndarray:
    """Zero-shot CLIP computed straight from open_clip, without any prompt learner."""
    from dapt_core.data.dataset import PromptDataset

    data = PromptDataset(samples, image_size=backbone.image_size, mean=backbone.mean, std=backbone.std, train=False)
    images = torch.stack([data[i]["image"] for i in range(len(samples))])
    with torch.no_grad():
        text = backbone.model.encode_text(backbone.tokenize([f"a photo of a {c}." for c in classnames]))
        image = backbone.model.encode_image(images)
    text = text / text.norm(dim=-1, keepdim=True)
    image = image / image.norm(dim=-1, keepdim=True)
    return (image @ text.t()).argmax(dim=1).numpy()


def test_zero_shot_method_is_zero_shot_clip(tmp_path, tiny_backbone):
    cfg = BenchConfig(shots=(1,), seeds=(2,), methods=("zero-shot",), **{**REDUCED, "n_test": 4})
    result = run_bench(cfg, backbone=tiny_backbone)
    data = load_task(bench_task(cfg, 2, 1), tmp_path / "task")
    learner, history = train_method(METHODS["zero-shot"], tiny_backbone, data, cfg, seed=2)
    assert history == [] and learner.kind == "coop"
    run = result["runs"][0]
    for split in ("aligned", "balanced", "conflicting"):
        samples = data.samples[f"test_{split}"]
        expected = _zero_shot_clip_predictions(tiny_backbone, data.task.classnames, samples)
        preds, labels = predict(learner, samples)
        np.testing.assert_array_equal(preds, expected)
        assert run[f"{split}_acc"] == pytest.approx(100.0 * np.mean(expected == labels), abs=1e-3), split


def test_labels_follow_task_class_names_not_folder_order(tmp_path):
    cfg = BenchConfig(shots=(2,), seeds=(1,), n_classes=4, n_test=1)
    task = build_task(cfg, 1, 2)
    data = load_task(bench_task(cfg, 1, 2), tmp_path / "task")
    # the task's classes are not in sorted order, so a folder-order labelling would differ
    assert list(data.task.classnames) != sorted(data.task.classnames)
    for split, samples in data.samples.items():
        scenes = getattr(task, split)
        assert [s.classname for s in samples] == [sc.object for sc in scenes]
        assert [s.label for s in samples] == list(task.labels(scenes))
        mask = data.masks[split].get(0, samples[0])
        assert np.array_equal(mask > 0.5, scenes[0].mask)


def test_prompt_sets_command_saves_small_sets_with_metrics(tmp_path, tiny_backbone, capsys):
    code = main(["bench", "synth-prompts", "--backbone", "tiny-vit", "--device", "cpu", "--shots", "1",
                 "--epochs", "2", "--n-classes", "3", "--n-test", "2", "--threads", "1",
                 "--methods", "coop,coop+dapt-mask", "--out", str(tmp_path)])
    assert code == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["files"] == ["synth-coop.safetensors", "synth-coop-dapt.safetensors"]
    info = read_info(tmp_path / "synth-coop-dapt.safetensors")
    assert info.label == "CoOp + DAPT (mask)"
    assert set(SUMMARY_FIELDS) <= set(info.meta["metrics"])
    assert info.meta["classnames"] == list(OBJECT_CLASSES[:3])
    assert len(info.meta["train"]["history"]) == 2
    assert (tmp_path / "synth-coop-dapt.safetensors").stat().st_size < 64 * 1024
    learner = load_prompt_set(tmp_path / "synth-coop.safetensors", tiny_backbone)
    assert learner.classnames == list(OBJECT_CLASSES[:3])


def test_prompt_sets_refuse_untrained_methods(tiny_backbone, tmp_path):
    cfg = BenchConfig(shots=(1,), seeds=(1,), methods=("zero-shot",), **REDUCED)
    with pytest.raises(ValueError, match="nothing to save"):
        train_prompt_sets(tmp_path, cfg, backbone=tiny_backbone)


def test_examples_are_deterministic_with_exact_masks(tmp_path):
    first = write_examples(tmp_path / "a", seed=1)
    second = write_examples(tmp_path / "b", seed=1)
    assert first == second
    assert {r["split"] for r in first} == {"aligned", "conflicting"}
    assert len({r["background"] for r in first if r["split"] == "conflicting"}) == 4
    assert "| conflicting |" in (tmp_path / "a" / "README.md").read_text()
    for record in first:
        if record["split"] == "conflicting":
            assert record["background"] != record["training_background"]
            assert record["background_trains"] not in (None, record["object"])
        else:
            assert record["background"] == record["training_background"]
        a = (tmp_path / "a" / record["file"]).read_bytes()
        assert a == (tmp_path / "b" / record["file"]).read_bytes()
        mask = cv2.imread(str(tmp_path / "a" / record["mask"]), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255} and mask.max() == 255
        view = cv2.imread(str(tmp_path / "a" / record["view"]))
        assert view.shape == (256, 256, 3)


def test_bad_method_name_is_refused():
    with pytest.raises(ValueError, match="methods: unknown"):
        BenchConfig(methods=("coop", "clip-adapter"))


def test_merge_results_of_per_seed_runs(tiny_backbone):
    runs = [run_bench(BenchConfig(shots=(1,), seeds=(seed,), methods=("zero-shot",), **REDUCED),
                      backbone=tiny_backbone) for seed in (1, 2)]
    merged = merge_results(runs)
    assert merged["config"]["seeds"] == [1, 2] and merged["tasks_done"] == merged["tasks_total"] == 2
    stats = merged["summary"]["1"]["zero-shot"]["aligned_acc"]
    assert stats["n"] == 2
    assert stats["mean"] == pytest.approx((runs[0]["runs"][0]["aligned_acc"] + runs[1]["runs"][0]["aligned_acc"]) / 2)
    with pytest.raises(ValueError, match="appears twice"):
        merge_results([runs[0], runs[0]])
    other = run_bench(BenchConfig(shots=(1,), seeds=(3,), methods=("zero-shot",), **{**REDUCED, "epochs": 2}),
                      backbone=tiny_backbone)
    with pytest.raises(ValueError, match="epochs"):
        merge_results([runs[0], other])


def test_object_radius_sets_the_size_of_every_split_and_bad_ranges_are_refused():
    default = build_task(BenchConfig(n_classes=3, n_test=4), seed=1, shots=2)
    small = build_task(BenchConfig(n_classes=3, n_test=4, object_radius=(0.1, 0.12)), seed=1, shots=2)
    # the pairing and the classes come from the seed alone; only the sizes change
    assert small.pairing == default.pairing
    for split in ("train", "test_aligned", "test_conflicting", "test_balanced"):
        for scene, base in zip(getattr(small, split), getattr(default, split), strict=True):
            side = scene.mask.shape[0]
            assert scene.mask.sum() <= np.pi * (0.12 * side + 1) ** 2 < base.mask.sum()
    for bad in ((0.0, 0.2), (0.3, 0.2), (0.2, 0.49), (0.1, 0.2, 0.3)):
        with pytest.raises(ValueError, match="object_radius"):
            BenchConfig(object_radius=bad)
