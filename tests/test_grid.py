"""The paper-scale grid: config, cells, a real local Ray cluster with a killed worker, the tables and figure.

One local Ray instance (loopback address, 2 CPUs, no dashboard) serves the whole module: it is the slow part.
"""

import json
import os
import signal
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dapt_core.data.coop import load_coop
from dapt_core.backbones import load_backbone
from dapt_core.checkpoint import load_prompt_set
from dapt_core.data.folders import few_shot, subsample_classes
from dapt_core.grid import aggregate
from dapt_core.grid.calibrate import CellSize, Timing, cell_seconds, cell_sizes, estimate, parallel_trials
from dapt_core.grid.cells import METRICS_FILE, PROMPTS_FILE, STATE_FILE, expand, plan, read_finished
from dapt_core.grid.config import GridConfigError, list_presets, load_config, parse_config
from dapt_core.grid.engine import TrialResources, run_jobs
from dapt_core.grid.masks import job_images, mask_jobs
from dapt_core.grid.published import BASE_TO_NOVEL_AVERAGE
from dapt_core.grid.runner import RESULTS_CSV, RESULTS_MD, run_grid
from dapt_core.grid.trial import run_cell
from dapt_core.segment.bulk import mask_path
from dapt_core.train import TrainConfig, evaluate, harmonic_mean

# Two of CoOp's data sets in its layout: (key, folder, image folder, split file, classes)
LAYOUTS = [("eurosat", "eurosat", "2750", "split_zhou_EuroSAT.json", ["forest", "river", "sea lake"]),
           ("dtd", "dtd/dtd", "images", "split_zhou_DescribableTextures.json", ["banded", "dotted", "woven"])]
PER_CLASS = {"train": 3, "val": 2, "test": 3}
GRID = {"setting": "few_shot", "datasets": ["eurosat", "dtd"], "methods": ["coop", "maple+dapt-g"], "shots": [2],
        "seeds": [1, 2], "backbone": "tiny-vit", "device": "cpu", "train": {"epochs": 2},
        "resources": {"num_cpus": 1, "num_gpus": 0}, "max_retries": 2}
KILLED = "few_shot/eurosat/maple+dapt-g/2shot/seed2"  # the cell whose worker is killed mid-training


def write_coop_layout(root: Path, layouts=LAYOUTS) -> None:
    rng = np.random.default_rng(0)
    for _, folder, image_dir, split_file, names in layouts:
        content = {split: [] for split in PER_CLASS}
        for label, name in enumerate(names):
            for split, count in PER_CLASS.items():
                for i in range(count):
                    rel = f"{name.replace(' ', '_')}/{split}_{i}.png"
                    path = root / folder / image_dir / rel
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path)
                    content[split].append([rel, label, name])
        (root / folder / split_file).write_text(json.dumps(content))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coop")
    write_coop_layout(root)
    return root


@pytest.fixture(scope="module")
def grid_cfg(data_root):
    return parse_config({**GRID, "data_root": str(data_root)})


@pytest.fixture(scope="module")
def ray_cluster():
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # bind the local instance to 127.0.0.1 only
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    # the trial wrappers below live in this test module, which the workers cannot import: ship them by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def sequential(grid_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("sequential")
    report = run_grid(grid_cfg, out, backend="sequential", progress=False)
    return out, report


def kill_once_in_second_epoch(marker: Path, cell):
    """The trial, except that the worker of the KILLED cell kills itself in epoch 2 the first time."""
    def on_step(step):
        if step.epoch == 1 and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

    return run_cell(cell, on_step=on_step if cell.key == KILLED else None)


def _numbers(out: Path, cells) -> dict:
    found = {}
    for cell in cells:
        record = json.loads((Path(cell.folder) / METRICS_FILE).read_text())
        losses = [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in record["history"]]
        found[cell.key] = (record["metrics"], losses, load_file(Path(cell.folder) / PROMPTS_FILE))
    return found


# --- config ------------------------------------------------------------------------------------------------

def test_presets_carry_the_official_settings():
    official = TrainConfig()  # its defaults are the official release's values (METHOD.md)
    assert list_presets() == ["base_to_novel", "data_efficient", "few_shot"]
    few = load_config("few_shot", {"data_root": "/data"})
    b2n = load_config("base_to_novel", {"data_root": "/data"})
    assert (few.shots, few.seeds, b2n.seeds, b2n.shots) == ([1, 2, 4, 8, 16], [1, 2, 3], [1, 2, 3], [16])
    for cfg, epochs in ((few, official.epochs), (b2n, 5)):
        train = TrainConfig(**cfg.train)
        assert (train.epochs, train.batch_size, train.lr, train.warmup_lr, train.selection) == (
            epochs, official.batch_size, official.lr, official.warmup_lr, "best_val")
        assert len(cfg.datasets) == 11 and cfg.backbone == "ViT-B-16"
        assert cfg.methods == ["coop", "maple", "coop+dapt-g", "maple+dapt-g", "maple+dapt-s"]
    assert len(expand(few, "/o")) == 11 * 5 * 5 * 3 and len(expand(b2n, "/o")) == 11 * 5 * 3


def test_a_file_overrides_its_preset_key_by_key(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("preset: base_to_novel\ndata_root: /d\ndatasets: [dtd]\ntrain: {epochs: 3}\n")
    cfg = load_config(path)
    assert cfg.setting == "base_to_novel" and cfg.datasets == ["dtd"]
    assert cfg.train["epochs"] == 3 and cfg.train["lr"] == TrainConfig().lr  # the rest of `train` kept


@pytest.mark.parametrize("change, message", [
    ({"shots": [2, -1]}, "shots: -1"),
    ({"methods": ["coop", "cocoop"]}, "cocoop"),
    ({"colour": 1}, "unknown grid config key"),
    ({"train": {"seed": 3}}, "may not set seed"),
    ({"train": {"epochs": 0}}, "epochs must be an integer >= 1"),
    ({"dapt": {"margin": -1}}, "margin"),
    ({"data_root": None}, "no data_root"),
    ({"seeds": [1, 1]}, "twice"),
    ({"learner_options": {"coop": {"depth": 3}}}, "coop has no option"),
    ({"fractions": [0.5]}, "belong to the data_efficient setting"),
    ({"methods": ["maple+dapt-s"], "masks": {"segmenter": "seem"}}, "masks.segmenter 'seem'"),
    ({"resources": {"num_gpus": "two"}}, "num_gpus"),
])
def test_bad_configs_are_refused_naming_the_key(data_root, change, message):
    with pytest.raises(GridConfigError, match=message):
        parse_config({**GRID, "data_root": str(data_root), **change})


def test_data_efficient_without_the_selection_module_says_so():
    try:
        import dapt_core.selection  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(GridConfigError, match="selection.*does not have"):
            load_config("data_efficient", {"data_root": "/data"})
    else:
        with pytest.raises(GridConfigError, match="no-such-method"):
            load_config("data_efficient", {"data_root": "/data", "selection_methods": ["no-such-method"]})


# --- cells -------------------------------------------------------------------------------------------------

def test_cells_have_deterministic_folders_and_a_run_of_other_settings_is_refused(grid_cfg, tmp_path):
    cells = expand(grid_cfg, tmp_path)
    assert len(cells) == 2 * 2 * 1 * 2
    assert [c.key for c in expand(grid_cfg, tmp_path)] == [c.key for c in cells]
    assert cells[0].folder == str(tmp_path / "few_shot" / "eurosat" / "coop" / "2shot" / "seed1")
    finished, todo = plan(cells)
    assert finished == [] and len(todo) == len(cells)
    # naming a default makes the same cell; DAPT settings are no part of a plain learner's cell
    same = parse_config({**GRID, "data_root": grid_cfg.data_root, "train": {"epochs": 2, "lr": TrainConfig().lr},
                         "dapt": {"margin": 2.0}})
    pairs = list(zip(cells, expand(same, tmp_path)))
    assert all(a.identity() == b.identity() for a, b in pairs if a.method == "coop")
    assert [a.identity()["dapt"]["margin"] for a, _ in pairs if a.method != "coop"][0] != 2.0
    assert all(b.identity()["dapt"]["margin"] == 2.0 for a, b in pairs if a.method != "coop")
    other = parse_config({**GRID, "data_root": grid_cfg.data_root, "train": {"epochs": 3}})
    run_cell(expand(other, tmp_path)[0])
    with pytest.raises(GridConfigError, match=r"coop/2shot/seed1: train\.epochs: 3 there, 2 now"):
        run_grid(grid_cfg, tmp_path, backend="sequential", progress=False)
    assert not (Path(cells[1].folder)).exists()  # refused before anything ran


# --- the engine on Ray -------------------------------------------------------------------------------------

def fail_on_key(counter_dir: Path, payload):
    key, value = payload
    (counter_dir / f"{key}.{len(list(counter_dir.glob(f'{key}.*')))}").touch()
    if key == "bad":
        raise RuntimeError(f"cannot do {value}")
    return value * 2


def test_a_failing_trial_is_retried_then_reported_and_the_others_go_on(ray_cluster, tmp_path):
    jobs = {k: (k, v) for k, v in (("a", 1), ("bad", 2), ("c", 3))}
    report = run_jobs(partial(fail_on_key, tmp_path), jobs, resources=TrialResources(1, 0), max_retries=1,
                      progress=False)
    assert report.results == {"a": 2, "c": 6}
    assert report.failed == {"bad": "RuntimeError: cannot do 2"}
    assert len(list(tmp_path.glob("bad.*"))) == 2 and len(list(tmp_path.glob("a.*"))) == 1


def test_resources_the_cluster_lacks_are_refused(ray_cluster):
    with pytest.raises(ValueError, match="asks for 1 GPUs but the cluster has 0"):
        run_jobs(abs, {"x": -1}, resources=TrialResources(1, 1), progress=False)


# --- the grid on Ray, with a killed worker -----------------------------------------------------------------

def test_ray_grid_with_a_killed_worker_gives_the_sequential_numbers(ray_cluster, grid_cfg, sequential, tmp_path):
    seq_out, seq_report = sequential
    assert seq_report.failed == {} and len(seq_report.ran) == 8
    marker = tmp_path / "killed.pid"
    report = run_grid(grid_cfg, tmp_path / "ray", trial=partial(kill_once_in_second_epoch, marker), progress=False)
    assert marker.exists(), "the worker was never killed"
    assert report.failed == {} and sorted(report.ran) == sorted(seq_report.ran)
    cells = expand(grid_cfg, tmp_path / "ray")
    killed = next(c for c in cells if c.key == KILLED)
    record = read_finished(killed)
    assert record["resumed"] is True and not (Path(killed.folder) / STATE_FILE).exists()
    ours, theirs = _numbers(tmp_path / "ray", cells), _numbers(seq_out, expand(grid_cfg, seq_out))
    for key, (metrics, losses, prompts) in ours.items():
        assert metrics == theirs[key][0] and losses == theirs[key][1], key
        assert prompts.keys() == theirs[key][2].keys()
        for name, tensor in prompts.items():
            assert torch.equal(tensor, theirs[key][2][name]), (key, name)

    again = run_grid(grid_cfg, tmp_path / "ray", progress=False)
    assert again.ran == [] and again.failed == {} and len(again.already_finished) == 8


# --- tables and figure -------------------------------------------------------------------------------------

def test_the_grid_tables_hold_the_cells_numbers(grid_cfg, sequential):
    out, _ = sequential
    records = [read_finished(c) for c in expand(grid_cfg, out)]
    acc = {(r["identity"]["dataset"], r["identity"]["method"], r["identity"]["seed"]): r["metrics"]["accuracy"]
           for r in records}
    md = (out / "few_shot" / RESULTS_MD).read_text()
    for method, title in (("coop", "CoOp"), ("maple+dapt-g", "MaPLe + DAPT-G")):
        per_seed = {s: [acc[(d, method, s)] for d in ("eurosat", "dtd")] for s in (1, 2)}
        cells = [f"{np.mean(v):.2f} ± {np.std(v):.2f}" for v in
                 ([acc[("eurosat", method, s)] for s in (1, 2)], [acc[("dtd", method, s)] for s in (1, 2)],
                  [np.mean(per_seed[s]) for s in (1, 2)])]
        assert f"| {title} | {' | '.join(cells)} |" in md
    rows = (out / "few_shot" / RESULTS_CSV).read_text().splitlines()
    assert len(rows) == 1 + 2 * 3  # header, 2 methods x (2 data sets + average)
    image = Image.open(out / "few_shot" / "accuracy_vs_shots.png")
    assert image.size[0] > 300 and image.format == "PNG"


def _record(dataset, method, seed, **metrics):
    return {"identity": {"dataset": dataset, "method": method, "shots": 16, "seed": seed, "selection": None,
                         "fraction": None}, "metrics": metrics}


def test_base_to_novel_table_by_value_with_the_published_figures():
    cfg = parse_config({**GRID, "setting": "base_to_novel", "data_root": "/d", "methods": ["maple"],
                        "shots": [16], "seeds": [1, 2]})
    records = [_record("eurosat", "maple", 1, base={"accuracy": 80.0}, novel={"accuracy": 60.0}, hm=0),
               _record("eurosat", "maple", 2, base={"accuracy": 90.0}, novel={"accuracy": 70.0}, hm=0),
               _record("dtd", "maple", 1, base={"accuracy": 70.0}, novel={"accuracy": 50.0}, hm=0)]
    tables = aggregate.build_tables(cfg, records, ["eurosat", "dtd"])
    average, eurosat, dtd = tables
    ours = average.rows[0]
    # only seed 1 has both data sets: the average is theirs for seed 1
    assert (ours.cells[0].mean, ours.cells[1].mean, ours.cells[0].n) == (75.0, 55.0, 1)
    assert ours.cells[2].mean == pytest.approx(harmonic_mean(75.0, 55.0))
    assert (eurosat.rows[0].cells[0].mean, eurosat.rows[0].cells[0].std) == (85.0, 5.0)
    assert dtd.rows[0].cells[0].text(seeds=2) == "70.00 ± 0.00*"
    assert [r.label for r in average.rows][:2] == ["MaPLe", "MaPLe (published)"]  # the paper's beside ours
    published = {r.label: [c.mean for c in r.cells] for r in average.rows[1:]}
    assert len(published) == len(BASE_TO_NOVEL_AVERAGE)
    assert published["MaPLe (published)"] == [BASE_TO_NOVEL_AVERAGE["MaPLe"].base,
                                               BASE_TO_NOVEL_AVERAGE["MaPLe"].novel, BASE_TO_NOVEL_AVERAGE["MaPLe"].hm]
    md = aggregate.to_markdown(cfg, tables, ["eurosat", "dtd"])
    assert "| MaPLe (published) | 82.28 | 75.14 | 78.55 |" in md and "arXiv 2508.00395" in md
    assert "ours average 2 data set(s), theirs 11" in md
    csv_rows = aggregate.to_csv(cfg, tables).splitlines()
    assert sum("arXiv 2508.00395" in row for row in csv_rows) == 3 * len(BASE_TO_NOVEL_AVERAGE)


def test_published_harmonic_means_agree_with_their_base_and_novel():
    for row in BASE_TO_NOVEL_AVERAGE.values():
        assert harmonic_mean(row.base, row.novel) == pytest.approx(row.hm, abs=0.006), row.method


# --- masks and DAPT-S, dry run -----------------------------------------------------------------------------

def test_masks_fan_out_then_dapt_s_trains_on_them(ray_cluster, data_root, tmp_path):
    cfg = parse_config({**GRID, "data_root": str(data_root), "datasets": ["dtd"], "methods": ["maple+dapt-s"],
                        "shots": [1, 2], "seeds": [1], "masks": {"segmenter": "cam"}})
    report = run_grid(cfg, tmp_path, steps=("masks",), progress=False)
    (job,) = mask_jobs(cfg, expand(cfg, tmp_path))
    images, root, _ = job_images(job)
    train = load_coop("dtd", data_root).train
    assert set(images) == set(few_shot(train, 1, 1)) | set(few_shot(train, 2, 1))  # both draws the cells train on
    assert report.masks["masks/dtd"]["written"] == len(images) and report.failed == {}
    pngs = set((tmp_path / "masks" / "dtd").rglob("*.png"))
    assert pngs == {mask_path(s.path, root, tmp_path / "masks" / "dtd") for s in images}
    done = run_grid(cfg, tmp_path, backend="sequential", progress=False)
    assert done.masks == {} and done.failed == {} and len(done.ran) == 2


def test_dry_run_estimate_is_the_calibration_times_the_cell_sizes(grid_cfg, tmp_path):
    cells = expand(grid_cfg, tmp_path)
    sizes = cell_sizes(cells)
    # 3 classes x 2 shots; validation draws min(2, 4) per class; one test pass over 3 x 3 images
    assert sizes[cells[0].key] == CellSize(3, 6, 6, ((9, 3),))
    timings = [Timing(2, 1.0, 0.5), Timing(4, 3.0, 1.5)]
    assert cell_seconds(CellSize(3, 6, 6, ((9, 3),)), 2, timings) == pytest.approx(2 * (6 * 2.0 + 6 * 1.0) + 9 * 1.0)
    assert parallel_trials(TrialResources(1, "auto"), {"CPU": 16, "GPU": 2}) == 2
    assert parallel_trials(TrialResources(4, 0), {"CPU": 16, "GPU": 2}) == 4
    est = estimate(grid_cfg, cells, TrialResources(1, 0), {"CPU": 2, "GPU": 0})
    assert set(est.timings) == {"coop", "maple+dapt-g"} and est.parallel == 2
    assert est.seconds[cells[0].key] == pytest.approx(cell_seconds(sizes[cells[0].key], 2, est.timings["coop"]))
    assert est.wall_seconds == pytest.approx(est.total_seconds / 2)


def test_cli_grid_dry_run_and_a_finished_grid(grid_cfg, sequential, tmp_path, capsys):
    from dapt_core.cli import main

    out, _ = sequential
    path = tmp_path / "grid.yaml"
    path.write_text(json.dumps({**GRID, "data_root": grid_cfg.data_root}))  # JSON is YAML
    assert main(["grid", str(path), "--out", str(out), "--dry-run", "--no-calibration"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"setting": "few_shot", "runs": 8,
                                                                    "finished": 8, "to_run": 0}
    assert main(["grid", str(path), "--out", str(out), "--sequential"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (result["ran"], result["finished_before"], result["failed"]) == (0, 8, 0)
    assert main(["grid", str(path), "--out", str(tmp_path / "x"), "--num-cpus", "0"]) == 2


# --- base-to-novel and data-efficient cells, end to end ----------------------------------------------------

def test_a_base_to_novel_cell_trains_on_base_and_tests_each_half_with_its_classes(tmp_path):
    write_coop_layout(tmp_path, [("eurosat", "eurosat", "2750", "split_zhou_EuroSAT.json",
                                  ["forest", "river", "sea lake", "highway"])])
    cfg = parse_config({**GRID, "setting": "base_to_novel", "data_root": str(tmp_path), "datasets": ["eurosat"],
                        "methods": ["maple"], "seeds": [1]})
    (cell,) = expand(cfg, tmp_path / "out")
    record = run_cell(cell)
    splits = load_coop("eurosat", tmp_path)
    base, novel = (subsample_classes(splits, half) for half in ("base", "novel"))
    backbone = load_backbone("tiny-vit", device="cpu")
    learner = load_prompt_set(Path(cell.folder) / PROMPTS_FILE, backbone)
    assert learner.classnames == base.classnames  # trained on the base half only
    assert record["train_images"] == len(few_shot(base.train, 2, 1))
    for half, part in (("base", base), ("novel", novel)):
        learner.set_classnames(part.classnames)
        assert record["metrics"][half] == evaluate(learner, part.test), half
    assert record["metrics"]["hm"] == pytest.approx(
        harmonic_mean(record["metrics"]["base"]["accuracy"], record["metrics"]["novel"]["accuracy"]), abs=1e-4)


def test_data_efficient_cells_train_on_the_selected_share(data_root, tmp_path):
    selection = pytest.importorskip("dapt_core.selection")
    cfg = parse_config({**GRID, "setting": "data_efficient", "data_root": str(data_root), "datasets": ["eurosat"],
                        "methods": ["coop"], "shots": [3], "seeds": [1], "fractions": [0.5, 1.0],
                        "selection_methods": ["uniform", "herding"]})
    report = run_grid(cfg, tmp_path, backend="sequential", progress=False)
    assert report.failed == {} and len(report.ran) == 4
    draw = few_shot(load_coop("eurosat", data_root).train, 3, 1)
    backbone = load_backbone("tiny-vit", device="cpu")
    for cell in expand(cfg, tmp_path):
        kept, expected = selection.select_samples(
            draw, selection.SelectionConfig(fraction=cell.fraction, method=cell.selection, seed=1),
            backbone=backbone, classnames=load_coop("eurosat", data_root).classnames)
        record = read_finished(cell)
        assert record["train_images"] == len(kept) and (len(kept) < len(draw)) == (cell.fraction < 1), cell.key
        assert record["selection"]["kept_sha256"] == expected["kept_sha256"], cell.key
    md = (tmp_path / "data_efficient" / RESULTS_MD).read_text()
    assert "| herding 0.5 |" in md and "| uniform 1 |" in md
    assert Image.open(tmp_path / "data_efficient" / "accuracy_vs_fraction.png").format == "PNG"


def test_failed_masks_leave_their_dapt_s_cells_reported_and_the_others_run(data_root, tmp_path):
    cfg = parse_config({**GRID, "data_root": str(data_root), "datasets": ["dtd"], "methods": ["coop", "maple+dapt-s"],
                        "seeds": [1], "max_retries": 0,
                        "masks": {"segmenter": "sam", "sam_checkpoint": str(tmp_path / "no-sam.pth")}})
    report = run_grid(cfg, tmp_path, backend="sequential", progress=False)
    assert report.ran == ["few_shot/dtd/coop/2shot/seed1"]
    assert "no-sam.pth" in report.failed["masks/dtd"]
    assert report.failed["few_shot/dtd/maple+dapt-s/2shot/seed1"] == "not run: the masks of dtd failed"
