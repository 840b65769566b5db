"""The synth-web bundle for the app: the picking rule, the benchmark's aggregate beside each scene's numbers, the
example folder and its manifest read back by the app, and the command end to end on synth-web."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict

import numpy as np
import pytest

from dapt_core import app_support as support
from dapt_core import paths
from dapt_core.cli import main
from dapt_core.cli import web_bundle as cli_bundle
from dapt_core.experiments import web_bundle as wb
from dapt_core.experiments.background_shift_results import aggregate, t_quantile
from dapt_core.experiments.bias_worlds import DownstreamTask, LabelledScenes
from dapt_core.experiments.web_bundle_report import build_manifest, quantile_words, write_examples

WEB_WEIGHTS = paths.CHECKPOINT_DIR / "synth-web.safetensors"
MINI_WEIGHTS = paths.CHECKPOINT_DIR / "synth-mini.safetensors"
needs_web = pytest.mark.skipif(not WEB_WEIGHTS.is_file(), reason="checkpoints/synth-web.safetensors is not on this "
                                                                  "machine")
# the bundle's defaults, spelt out: MaPLe's pair ranks the scenes (the method the official DAPT wraps) by the relevance
# map (the gates' registration v3), Grad-CAM second; fixed before the benchmark's result
# (docs/results/web_bench_settings.md). CoOp's runs sit beside MaPLe's in the records below with other differences,
# and the second map's shares differ from the first's, so that ranking by the wrong pair or map gives other scenes.
PAIR = ("maple", "maple+dapt-mask")
CAMS = ("relevance", "gradcam")
CLASSES = ("circle", "oval", "octagon")


def _record(method: str, shares: list[float], gradcam: list[float], predictions: list[int], seed: int = 1,
            shots: int = 16) -> dict:
    """A run record of the bundle's maps: ``shares`` under the first (relevance, the plain key), ``gradcam``."""
    labels = [i % len(CLASSES) for i in range(len(shares))]
    return {"shots": shots, "seed": seed, "method": method, "object_attention": float(np.nanmean(shares)),
            "object_attention@gradcam": float(np.mean(gradcam)), "conflicting_acc": 50.0,
            "per_scene": {"label": labels, "background": ["wall"] * len(shares), "prediction": predictions,
                          "object_attention": shares, "object_attention@gradcam": gradcam}}


def test_cli_constants_are_the_librarys():
    assert cli_bundle.BUNDLE_METHODS == wb.BUNDLE_METHODS and cli_bundle.PICK_PAIR == wb.PICK_PAIR
    assert cli_bundle.PICK_QUANTILES == wb.PICK_QUANTILES and cli_bundle.BUNDLE_CAMS == wb.BUNDLE_CAMS
    assert (wb.PICK_PAIR, wb.BUNDLE_CAMS, wb.PICK_QUANTILES) == (PAIR, CAMS, (0.1, 0.5, 0.9))
    cfg = wb.bundle_config(3, 8)
    assert (cfg.methods, cfg.cam_methods) == (("coop", "coop+dapt-mask", *PAIR), CAMS)
    wb.check_pick(cfg, wb.PICK_PAIR, wb.PICK_QUANTILES)  # the default run can make the default pick
    assert (cfg.world, cfg.task_variant, cfg.coop_class_specific, cfg.seeds, cfg.shots) == ("web", "rehomed", True,
                                                                                          (3,), (8,))
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.schedule, cfg.crop_min) == (10, 4, 0.0035, "official", 1.0)


def test_scenes_are_picked_at_the_quantiles_of_the_difference():
    base = [0.2] * 12
    # dapt - base, scene by scene; scene 11's map is all zero (NaN) and takes no rank
    differences = [0.5, -0.3, 0.1, 0.0, 0.9, 0.2, -0.1, 0.4, 0.3, 0.6, 0.7, math.nan]
    dapt = [b + d for b, d in zip(base, differences)]
    # CoOp's differences, and MaPLe's under the second map (Grad-CAM), rank the scenes in other orders
    rising = [b + 0.05 * i for i, b in enumerate(base)]
    falling = [b + 0.05 * (11 - i) for i, b in enumerate(base)]
    records = [_record("coop", base, base, [0] * 12), _record("coop+dapt-mask", rising, rising, [1] * 12),
               _record("maple", base, base, [0] * 12), _record("maple+dapt-mask", dapt, falling, [1] * 12)]
    cfg = wb.bundle_config(1, 16)
    picks = wb.pick_examples(records, cfg, quantiles=(0.1, 0.5, 0.9))  # the default pair and the first map
    # ascending: -0.3 (1), -0.1 (6), 0.0 (3), 0.1 (2), 0.2 (5), 0.3 (8), 0.4 (7), 0.5 (0), 0.6 (9), 0.7 (10), 0.9 (4);
    # 11 ranked scenes: ranks round(0.1 * 10) = 1, 0.5 * 10 = 5, 0.9 * 10 = 9
    assert [p["index"] for p in picks] == [6, 8, 10]
    assert [round(p["difference"], 6) for p in picks] == [-0.1, 0.3, 0.7]
    assert [p["index"] for p in wb.pick_examples(records, cfg, quantiles=(0.0, 0.5, 1.0))] == [1, 8, 4]
    # an explicit pair is the one ranked: CoOp's differences rise with the scene's index, none is NaN, so the ranks
    # of 12 scenes at the default quantiles are round(1.1) = 1, 5.5 -> 6 (half up) and 9.9 -> 10
    assert [p["index"] for p in wb.pick_examples(records, cfg, ("coop", "coop+dapt-mask"))] == [1, 6, 10]
    assert [quantile_words(q) for q in (0.1, 0.5, 0.9, 0.0, 0.25)] == ["10th percentile", "median",
                                                                       "90th percentile", "lowest", "25th percentile"]


def test_a_pick_the_run_cannot_make_is_refused():
    coop_only = wb.bundle_config(1, 16, methods=("coop", "coop+dapt-mask"))
    with pytest.raises(ValueError, match=r"\['maple', 'maple\+dapt-mask'\] not among the trained methods"):
        wb.check_pick(coop_only, wb.PICK_PAIR, (0.5,))  # the default pair needs MaPLe's runs
    with pytest.raises(ValueError, match=r"\['maple'\] not among the trained methods"):
        wb.check_pick(coop_only, ("maple", "coop+dapt-mask"), (0.5,))
    with pytest.raises(ValueError, match="a method without DAPT, one with"):
        wb.check_pick(coop_only, ("coop+dapt-mask", "coop"), (0.5,))
    cfg = wb.bundle_config(1, 16)
    with pytest.raises(ValueError, match="a method without DAPT, one with"):
        wb.check_pick(cfg, PAIR[::-1], (0.5,))
    with pytest.raises(ValueError, match=r"\['zero-shot'\] not among the trained methods"):  # run, but not trained
        wb.check_pick(wb.bundle_config(1, 16, methods=("zero-shot", *PAIR)), ("zero-shot", PAIR[1]), (0.5,))
    with pytest.raises(ValueError, match=r"quantiles: need one or more values in \[0, 1\], got \[1.5\]"):
        wb.check_pick(cfg, wb.PICK_PAIR, (1.5,))


def _benchmark(cfg, cams=CAMS, differences=(0.1, 0.3)) -> dict:
    """Two seeds of the bundle's methods: MaPLe+DAPT-S's first-map share is ``differences`` above MaPLe's (the second
    map's, half of that); CoOp+DAPT-S's is as much below CoOp's; each method has its own accuracy."""
    runs = []
    for seed, difference in zip((1, 2), differences):
        for n, (method, share) in enumerate((("maple", 0.2), ("maple+dapt-mask", 0.2 + difference),
                                             ("coop", 0.5), ("coop+dapt-mask", 0.5 - difference))):
            run = {"shots": 16, "seed": seed, "method": method, "conflicting_acc": 40.0 + 10 * n + seed,
                   "object_attention": share}
            if len(cams) > 1:
                run[f"object_attention@{cams[1]}"] = share / 2
            runs.append(run)
    config = json.loads(json.dumps(asdict(cfg)))
    return {"config": {**config, "seeds": [1, 2], "cam_methods": list(cams)}, "runs": runs,
            "summary": aggregate(runs)}


def test_the_benchmarks_aggregate_and_paired_difference():
    cfg = wb.bundle_config(1, 16)
    got = wb.benchmark_aggregate(_benchmark(cfg), cfg, wb.PICK_PAIR, "web.json")
    assert (got["source"], got["seeds"], got["shots"]) == ("web.json", [1, 2], 16)
    half = t_quantile(1) * math.sqrt(0.02) / math.sqrt(2)  # differences 0.1 and 0.3: std sqrt(0.02)
    assert got["difference"]["relevance"] == {"mean": 0.2, "ci95": [round(0.2 - half, 6), round(0.2 + half, 6)],
                                              "n": 2}
    assert got["difference"]["gradcam"]["mean"] == 0.1
    assert sorted(got["methods"]) == sorted(cfg.methods)
    assert [got["methods"][m]["conflicting_acc"]["mean"] for m in (*PAIR, "coop")] == [41.5, 51.5, 61.5]
    assert got["methods"]["maple+dapt-mask"]["energy_share"]["relevance"]["mean"] == 0.4
    assert got["methods"]["maple+dapt-mask"]["energy_share"]["gradcam"]["mean"] == 0.2
    # an explicit pair: CoOp+DAPT-S minus CoOp
    coop = wb.benchmark_aggregate(_benchmark(cfg), cfg, ("coop", "coop+dapt-mask"), "web.json")
    assert coop["difference"]["relevance"]["mean"] == -0.2 and coop["methods"] == got["methods"]
    # the benchmark's first map is Grad-CAM: its plain key is Grad-CAM's, and it never measured the relevance map
    only = wb.benchmark_aggregate(_benchmark(cfg, cams=("gradcam",)), cfg, wb.PICK_PAIR, "web.json")
    assert only["methods"]["maple"]["energy_share"] == {"relevance": None, "gradcam": only["methods"]["maple"][
        "energy_share"]["gradcam"]} and only["methods"]["maple"]["energy_share"]["gradcam"]["mean"] == 0.2
    assert only["difference"]["relevance"] is None and only["difference"]["gradcam"]["mean"] == 0.2


def test_a_benchmark_of_another_recipe_or_shot_count_is_refused():
    cfg = wb.bundle_config(1, 16)
    other = _benchmark(cfg)
    other["config"].update(epochs=1, coop_class_specific=False)
    with pytest.raises(ValueError, match="coop_class_specific: False there, True here; epochs: 1 there, 10 here"):
        wb.benchmark_aggregate(other, cfg, wb.PICK_PAIR, "web.json")
    with pytest.raises(ValueError, match=r"no run at 4 shots \(it has \['16'\]\)"):
        wb.benchmark_aggregate(_benchmark(cfg), wb.bundle_config(1, 4), wb.PICK_PAIR, "web.json")


def _task(n: int = 6) -> DownstreamTask:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    masks = np.zeros((n, 8, 8), bool)
    masks[:, 2:6, 2:4] = True  # 8 of 64 pixels
    labels = np.arange(n) % len(CLASSES)
    scenes = LabelledScenes(images, masks, labels, tuple(f"bg{i}" for i in range(n)))
    homes = {"circle": ("ground", "sand"), "oval": ("sky", "wood"), "octagon": ("railway", "tiles")}
    return DownstreamTask(CLASSES, scenes, {"test_conflicting": scenes}, "a hand-made task", homes)


def test_the_manifest_round_trip_through_the_apps_examples(tmp_path):
    cfg = wb.bundle_config(1, 16)
    base, dapt = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.3, 0.1, 0.35, 0.9, 0.5, 0.45]
    records = [_record("maple", base, [0.0] * 6, [0, 0, 0, 0, 0, 0]),
               _record("maple+dapt-mask", dapt, [0.25] * 6, [0, 1, 2, 0, 1, 0]),
               # CoOp's differences are MaPLe's negated: its pair would pick scenes 0, 4 and 5
               _record("coop", [0.5] * 6, [0.5] * 6, [1] * 6),
               _record("coop+dapt-mask", [0.3, 0.6, 0.45, 0.0, 0.5, 0.65], [0.5] * 6, [2] * 6)]
    # differences 0.2, -0.1, 0.05, 0.5, 0, -0.15: ranks 0.1 * 5 -> 1, 0.5 * 5 = 2.5 -> 3 (half up), 4.5 -> 5
    picks = wb.pick_examples(records, cfg)
    assert [p["index"] for p in picks] == [1, 2, 3]
    task = _task()
    benchmark = wb.benchmark_aggregate(_benchmark(cfg), cfg, wb.PICK_PAIR, "web.json")
    manifest = build_manifest(cfg, task, records, picks, wb.PICK_PAIR, benchmark, None, "python -m dapt_core x")
    written = write_examples(tmp_path / "ex", manifest, task)
    assert sorted(p.name for p in written) == sorted(
        ["00_q10_oval_on_bg1.png", "00_q10_oval_on_bg1_mask.png", "00_q10_oval_on_bg1_256.png",
         "01_q50_octagon_on_bg2.png", "01_q50_octagon_on_bg2_mask.png", "01_q50_octagon_on_bg2_256.png",
         "02_q90_circle_on_bg3.png", "02_q90_circle_on_bg3_mask.png", "02_q90_circle_on_bg3_256.png",
         "examples.json", "README.md"])
    assert json.loads((tmp_path / "ex" / "examples.json").read_text(encoding="utf-8")) == manifest
    assert (manifest["rule"]["base"], manifest["rule"]["dapt"], manifest["rule"]["cam"]) == (*PAIR, "relevance")
    assert manifest["cam_methods"] == list(CAMS) and "true class's relevance energy" in manifest["rule"]["text"]
    entry = manifest["examples"][2]
    assert (entry["object"], entry["scene_index"], entry["difference"], entry["object_area"]) == ("circle", 3, 0.5,
                                                                                                 0.125)
    assert entry["methods"]["maple+dapt-mask"] == {"prompt_set": "web-rehomed-maple-dapt", "prediction": "circle",
                                                   "correct": True, "energy_share": {"relevance": 0.9, "gradcam": 0.25}}
    assert entry["methods"]["maple"]["energy_share"] == {"relevance": 0.4, "gradcam": 0.0}
    assert entry["methods"]["coop+dapt-mask"] == {"prompt_set": "web-rehomed-coop-dapt", "prediction": "octagon",
                                                  "correct": False, "energy_share": {"relevance": 0.0, "gradcam": 0.5}}
    assert entry["web_homes"] == ["railway", "tiles"] and entry["downstream_homes"] == ["ground", "sand"]
    half = t_quantile(1) * math.sqrt(0.02) / math.sqrt(2)  # the benchmark's two seeds differ by 0.1 and 0.3
    assert (f"| MaPLe + DAPT-S `web-rehomed-maple-dapt` | circle ✓ | 0.900 / 0.250 | 0.400 [{0.4 - half:.3f}, "
            f"{0.4 + half:.3f}] / 0.200 [" in entry["note"])
    assert f"| MaPLe + DAPT-S − MaPLe |  | +0.500 / +0.250 | +0.200 [{0.2 - half:+.3f}, {0.2 + half:+.3f}] / " \
           in entry["note"]
    assert "share here (relevance / gradcam)" in entry["note"]
    assert ("picked at the **90th percentile** of MaPLe + DAPT-S minus MaPLe in relevance energy share"
            in entry["note"] and "seeds 1, 2" in entry["note"])
    assert "The app draws these maps with `relevance` (under Options)" in entry["note"]

    examples = support.Examples(tmp_path / "ex")  # what the app offers: the native scenes, captioned
    assert examples.cam_method == "relevance"  # the app's default map: the one the numbers were measured with
    assert [e.image.name for e in examples.items] == [e["file"] for e in manifest["examples"]]
    assert [e.label for e in examples.items] == ["10th percentile, DAPT -0.10: oval on bg1",
                                                 "median, DAPT +0.05: octagon on bg2",
                                                 "90th percentile, DAPT +0.50: circle on bg3"]
    upload = tmp_path / "upload" / "image.png"  # the same bytes under Gradio's name
    upload.parent.mkdir()
    shutil.copyfile(tmp_path / "ex" / entry["file"], upload)
    assert examples.note(upload) == entry["note"]
    assert np.array_equal(examples.exact_mask(upload), task.tests["test_conflicting"].masks[3])
    assert examples.note(tmp_path / "ex" / entry["enlarged"]) == "" and examples.note(None) == ""
    readme = (tmp_path / "ex" / "README.md").read_text(encoding="utf-8")
    assert "Written by `python -m dapt_core x`" in readme and entry["note"] in readme

    before = {p.name: p.read_bytes() for p in written}
    write_examples(tmp_path / "ex", manifest, task)
    assert {p.name: p.read_bytes() for p in written} == before
    # a rerun with other picks leaves no scene of the earlier one behind, and no other file is touched
    (tmp_path / "ex" / "notes.txt").write_text("mine")
    fewer = build_manifest(cfg, task, records, picks[2:], wb.PICK_PAIR, None, None, None)
    write_examples(tmp_path / "ex", fewer, task)
    assert sorted(p.name for p in (tmp_path / "ex").iterdir()) == [
        "00_q90_circle_on_bg3.png", "00_q90_circle_on_bg3_256.png", "00_q90_circle_on_bg3_mask.png", "README.md",
        "examples.json", "notes.txt"]
    assert "No benchmark result was given" in fewer["examples"][0]["note"]


def test_a_plain_list_manifest_still_reads(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "examples.json").write_text(json.dumps([{"file": "a.png", "split": "aligned", "object": "star"}]))
    examples = support.Examples(tmp_path)
    assert [(e.label, e.note) for e in examples.items] == [("aligned: star", None)] and examples.cam_method is None
    assert examples.note(tmp_path / "a.png") == ""


@pytest.fixture(scope="module")
def web_backbone():
    from dapt_core.backbones import load_backbone

    return load_backbone("synth-web", device="cpu")


@needs_web
def test_prompt_sets_of_another_backbone_are_refused_and_not_listed(tmp_path, web_backbone):
    from dapt_core.checkpoint import CheckpointError, load_prompt_set

    mini_set = paths.CHECKPOINT_DIR / "prompts" / "synth-coop.safetensors"
    if not mini_set.is_file():
        pytest.skip("checkpoints/prompts/synth-coop.safetensors is not on this machine")
    with pytest.raises(CheckpointError, match=r"made for backbone 'synth-mini' \(synth-mini, weights synth-v3\), but "
                                              r"the loaded backbone is 'synth-web' \(synth-web, weights synth-web-v1\)"):
        load_prompt_set(mini_set, web_backbone)
    catalog = support.PromptCatalog(web_backbone, mini_set.parent, tmp_path / "user")
    assert not [e.key for e in catalog.entries() if e.key.startswith("bundled/synth-")]


@needs_web
def test_the_command_bundles_what_the_app_shows(tmp_path, capsys, web_backbone, one_thread):
    import app
    from dapt_core.backbones import load_backbone
    from dapt_core.checkpoint import CheckpointError, load_prompt_set

    common = ["--device", "cpu", "--shots", "1", "--epochs", "1", "--n-test", "1", "--n-classes", "8"]
    assert main(["bench", "synth", "--world", "web", "--task-variant", "rehomed", "--coop-class-specific",
                 "--n-seeds", "1", "--methods", ",".join(PAIR), "--cam-methods", *CAMS,
                 "--suite-per-class", "0", "--out", str(tmp_path), "--name", "web", *common]) == 0
    # the default pair and maps: only the methods are cut down to the pair's
    bundle = ["bench", "web-bundle", *common, "--methods", *PAIR, "--benchmark",
              str(tmp_path / "web.json"), "--prompts-out", str(tmp_path / "prompts"), "--examples-out"]
    # another recipe than the benchmark's is refused before anything trains
    assert main([*bundle, str(tmp_path / "refused"), "--epochs", "2"]) == 2
    assert "epochs: 1 there, 2 here" in capsys.readouterr().err and not (tmp_path / "prompts").exists()
    assert main([*bundle, str(tmp_path / "examples")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the bundle reran the benchmark's seed-1 task: the same per-scene shares
    assert summary["agreement_with_benchmark"] == {m: {"relevance": 0.0, "gradcam": 0.0} for m in PAIR}
    assert sorted(p.name for p in (tmp_path / "prompts").iterdir()) == ["web-rehomed-maple-dapt.safetensors",
                                                                        "web-rehomed-maple.safetensors"]
    manifest = json.loads((tmp_path / "examples" / "examples.json").read_text(encoding="utf-8"))
    assert [e["quantile"] for e in manifest["examples"]] == [0.1, 0.5, 0.9] and manifest["task"]["n_scenes"] == 8
    assert (manifest["rule"]["base"], manifest["rule"]["dapt"], manifest["rule"]["cam"]) == (*PAIR, "relevance")

    # the app on synth-web with this bundle: the example's own numbers are the ones its maps give
    catalog = support.PromptCatalog(web_backbone, tmp_path / "prompts", tmp_path / "user")
    examples = support.Examples(tmp_path / "examples")
    assert examples.cam_method == "relevance"  # the app's default map on synth-web
    handlers = app.Handlers(web_backbone, catalog, examples)
    keys = catalog.default_keys()
    assert keys == ["bundled/web-rehomed-maple", "bundled/web-rehomed-maple-dapt"]
    entry = manifest["examples"][1]
    image = str(tmp_path / "examples" / entry["file"])
    assert handlers.example_note(image) == entry["note"] and handlers.suggest_segmenter(image, "cam") == "exact"
    *_, result = handlers.compare(image, keys, "", "exact", examples.cam_method, entry["object"])
    shares = {s["name"]: s["object_share"] for s in result["prompt_sets"]}  # the app's JSON keeps 4 decimals
    assert shares == {manifest["prompt_sets"][m]: round(v["energy_share"]["relevance"], 4)
                      for m, v in entry["methods"].items()}
    if MINI_WEIGHTS.is_file():  # and a web set is refused on synth-mini
        with pytest.raises(CheckpointError, match="made for backbone 'synth-web'"):
            load_prompt_set(tmp_path / "prompts" / "web-rehomed-maple.safetensors", load_backbone("synth-mini",
                                                                                                   device="cpu"))
