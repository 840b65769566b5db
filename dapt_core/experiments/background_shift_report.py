"""What the background-shift benchmark leaves on disk: raw JSON (with the per-scene values in a JSON-lines file
beside it), a Markdown table, a figure and example images (the prompt sets: :mod:`background_shift_prompts`).

The Markdown report is regenerated on every run, except for its ``## Findings`` section: a hand-written
reading of the numbers survives a rerun. Figures use ``matplotlib.figure.Figure`` (never pyplot) and are
saved through `dapt_core.viz.figure.save_figure`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dapt_core.fileio import write_bytes_atomic
from dapt_core.metric_units import MAP_SEPARATOR
from dapt_core.viz.figure import save_figure
from dapt_core.experiments.background_shift_results import attach_per_scene, split_per_scene
from dapt_core.world.export import write_example_images
from dapt_core.world.shapes import PoseConfig
from dapt_core.world.task import make_task
from dapt_core.world.web import DEFAULT_WEB_CONFIG

FINDINGS_HEADING = "## Findings"
FINDINGS_PLACEHOLDER = "_Not written yet: read the tables above and the diagnostics, then record what they show._"
# (key in a run record, column title, scale applied for display, decimals)
TABLE_COLUMNS = (
    ("aligned_acc", "aligned acc %", 1.0, 1),
    ("balanced_acc", "balanced acc %", 1.0, 1),
    ("conflicting_acc", "conflicting acc %", 1.0, 1),
    ("shortcut_rate", "conflicting: predicted the background's class %", 1.0, 1),
    ("worst_group_acc", "worst group acc % (class x aligned/conflicting)", 1.0, 1),
    ("object_attention", "object attention (0-1)", 1.0, 3),
    ("pointing_game", "pointing game (0-1)", 1.0, 3),
    ("bg_gap", "BG-Gap, Mixed-Same − Mixed-Rand (% points)", 1.0, 1),
)
# the metrics whose 95% intervals over seeds get a table of their own
INTERVAL_KEYS = ("conflicting_acc", "worst_group_acc", "shortcut_rate", "object_attention", "bg_gap")
# (key, column title, format) of the DAPT-minus-base table; attention of further maps is added per run
DELTA_COLUMNS = (("conflicting_acc", "conflicting acc (points)", "+.1f"),
                 ("balanced_acc", "balanced acc (points)", "+.1f"),
                 ("object_attention", "object attention", "+.3f"),
                 ("worst_group_acc", "worst group acc (points)", "+.1f"),
                 ("bg_gap", "BG-Gap (points)", "+.1f"))
DIAGNOSTIC_COLUMNS = (
    ("object_area", "object area share = chance level of the attention metrics (conflicting)", 1.0, 3),
    ("train_cue_iou", "Grad-CAM cue IoU with the true mask (train images)", 1.0, 3),
    ("bg_pseudo_label_acc", "background pseudo-label = true background (train)", 1.0, 3),
)
DAPT_PAIRS = (("coop", "coop+dapt-mask"), ("coop", "coop+dapt-gradcam"),
              ("maple", "maple+dapt-mask"), ("maple", "maple+dapt-gradcam"))
ACCURACY_BARS = (("aligned_acc", "aligned", "#4c72b0"), ("balanced_acc", "balanced", "#55a868"),
                 ("conflicting_acc", "conflicting", "#c44e52"))
ATTENTION_BARS = (("object_attention", "object attention", "#8172b2"),
                  ("pointing_game", "pointing game", "#ccb974"))
CHANCE_COLOUR = "#555555"
FIGURE_ROW_HEIGHT_IN = 3.4
LEGEND_HEADROOM = 1.15
FIGURE_WIDTH_IN = 13.0
BAR_GROUP_WIDTH = 0.8
EXAMPLE_VIEW_SIZE = 256  # upscaled copies for viewing; 64 px is native
EXAMPLE_CANDIDATES = 3  # test scenes per class to choose the examples from


def _cell(stats: dict | None, scale: float, decimals: int) -> str:
    if stats is None or stats["n"] == 0 or math.isnan(stats["mean"]):
        return "n/a"
    mean, std = stats["mean"] * scale, stats["std"] * scale
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}" if stats["n"] > 1 else f"{mean:.{decimals}f}"


def _interval_cell(stats: dict | None, scale: float, decimals: int) -> str:
    if stats is None or not stats.get("ci95"):
        return "n/a"
    low, high = (v * scale for v in stats["ci95"])
    return f"{low:.{decimals}f} – {high:.{decimals}f}"


def _table(per_method: dict, columns: tuple, cell=_cell) -> list[str]:
    lines = ["| method | " + " | ".join(title for _, title, _, _ in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for method, stats in per_method.items():
        cells = [cell(stats.get(key), scale, dec) for key, _, scale, dec in columns]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def cam_methods(cfg: dict) -> tuple[str, ...]:
    """The attention maps of a run's config (a result written before there were several: Grad-CAM alone)."""
    return tuple(cfg.get("cam_methods", ("gradcam",)))


def table_columns(cfg: dict) -> tuple:
    """:data:`TABLE_COLUMNS` with, after the first map's attention columns, the two of each further map of the run."""
    more = tuple((f"{metric}{MAP_SEPARATOR}{cam}", f"{title}, {cam} (0-1)", 1.0, 3) for cam in cam_methods(cfg)[1:]
                 for metric, title in (("object_attention", "object attention"), ("pointing_game", "pointing game")))
    after = [key for key, _, _, _ in TABLE_COLUMNS].index("pointing_game") + 1
    return TABLE_COLUMNS[:after] + more + TABLE_COLUMNS[after:]


def _deltas(per_method: dict, cfg: dict) -> list[str]:
    columns = DELTA_COLUMNS + tuple((f"object_attention{MAP_SEPARATOR}{cam}", f"object attention, {cam}", "+.3f")
                                    for cam in cam_methods(cfg)[1:])
    lines = ["| DAPT vs base | " + " | ".join(title for _, title, _ in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for base, dapt in DAPT_PAIRS:
        if base in per_method and dapt in per_method:
            cells = [_difference(per_method[dapt].get(k), per_method[base].get(k), fmt) for k, _, fmt in columns]
            lines.append(f"| {dapt} − {base} | " + " | ".join(cells) + " |")
    return lines


def _difference(dapt: dict | None, base: dict | None, fmt: str) -> str:
    if dapt is None or base is None or math.isnan(dapt["mean"]) or math.isnan(base["mean"]):
        return "n/a"
    return format(dapt["mean"] - base["mean"], fmt)


def _existing_findings(path: Path) -> str | None:
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    start = text.find(FINDINGS_HEADING)
    return text[start:].rstrip() + "\n" if start >= 0 else None


def _radius_text(radius: Sequence[float] | None) -> str:
    """The task's object radius range as the report states it."""
    if radius is None:
        pose = PoseConfig()
        return f"{pose.min_radius}-{pose.max_radius} of the side (the world's own)"
    return f"{radius[0]}-{radius[1]} of the side"


def _task_text(cfg: dict) -> str:
    """What the run's task trains and tests on, in the report's words."""
    world, variant = cfg.get("world", "synth"), cfg.get("task_variant", "home")
    if world == "synth":
        return ("Training shows every object on its own background only. Test splits: *aligned* (pairing holds), "
                "*balanced* (backgrounds independent of the object), *conflicting* (every object on another class's "
                "training background).")
    if variant == "rehomed":
        return (f"The web world's rehomed task: a downstream data set whose classes' usual backgrounds (their "
                f"downstream homes) are another class's web homes. Training shows each class on a downstream home "
                f"with probability {DEFAULT_WEB_CONFIG.p_home}, else on one of the other backgrounds. Test splits: "
                "*aligned* (downstream homes), *balanced* (all 16 backgrounds cycled), *conflicting* (the 12 "
                "backgrounds that are a home of the class in neither map).")
    return (f"The web world's task: training shows each class on one of its two web home backgrounds with "
            f"probability {DEFAULT_WEB_CONFIG.p_home}, else on one of the 14 others. Test splits: *aligned* (home "
            "backgrounds), *balanced* (all 16 backgrounds cycled), *conflicting* (the 14 non-home backgrounds).")


def _measures_text(result: dict) -> str:
    """What the attention, group and suite columns measure, in the report's words."""
    cams = cam_methods(result["config"])
    first = "Grad-CAM" if cams[0] == "gradcam" else f"`{cams[0]}`"
    text = (f"Attention columns: {first} of the TRUE class on the conflicting images, share of its energy inside the "
            "true object mask (`object_share`) and whether its peak is on the object (`pointing_game`)")
    if len(cams) > 1:
        text += "; the same with " + ", ".join(f"`{c}`" for c in cams[1:]) + " in the columns that name it"
    text += (". Worst group: the lowest accuracy over the groups class x {aligned, conflicting} (each class's scenes "
             "of one of the two splits).")
    suite = result["settings"].get("bias_suite")
    if suite:
        text += (f" BG-Gap: the tuned model in the bias suite ({suite['per_class']} base scenes per class, seeded "
                 "by the task seed), accuracy with the object pasted on a fresh background of its own class's home "
                 f"minus on another class's home, in points; home: {suite['homes']}.")
    return text + " `zero-shot` is CoOp initialised from \"a photo of a\" and not trained."


def _setup_text(result: dict) -> str:
    cfg = result["config"]
    world = cfg.get("world", "synth")
    where = (f"object radius {_radius_text(cfg.get('object_radius'))}; " if world == "synth"
             else f"task variant `{cfg.get('task_variant', 'home')}`; ")
    context = "; CoOp with class-specific context" if cfg.get("coop_class_specific") else ""
    return (f"Backbone `{cfg['backbone']}`; shots {list(cfg['shots'])}; seeds {list(cfg['seeds'])} (mean ± sample std "
            f"over seeds where there are several); {cfg['epochs']} epochs, batch {cfg['batch_size']}, lr {cfg['lr']}, "
            f"random-resized crops of at least {cfg.get('crop_min', 0.08)} of the image; {where}"
            f"DAPT schedule `{cfg['schedule']}` (switch epoch {result['settings']['dapt']['mask']['switch_epoch']})"
            f"{context}; {result['settings']['task']['n_classes']} classes, {cfg['n_test']} test images per class "
            f"and split; wall time {result['seconds']:.0f} s.")


def markdown_report(result: dict, findings: str | None = None, command: str | None = None) -> str:
    """The report text: one table per shot count, DAPT-minus-base deltas, 95% intervals over seeds, diagnostics,
    settings, findings."""
    cfg = result["config"]
    world = cfg.get("world", "synth")
    title = "the synthetic world" if world == "synth" else f"the {world} world ({cfg.get('task_variant')} task)"
    lines = [f"# Background-shift benchmark on {title}", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [_setup_text(result), ""]
    if result["tasks_done"] < result["tasks_total"]:
        lines += [f"**Partial: {result['tasks_done']} of {result['tasks_total']} (shots, seed) tasks done so far.**",
                  ""]
    lines += [_task_text(cfg) + " " + _measures_text(result), ""]
    columns = table_columns(cfg)
    intervals = tuple(c for c in columns if c[0].partition(MAP_SEPARATOR)[0] in INTERVAL_KEYS)
    for shots, per_method in result["summary"].items():
        lines += [f"## {shots} shot(s) per class", "", *_table(per_method, columns), "", *_deltas(per_method, cfg), ""]
        if any(stats.get("ci95") for run in per_method.values() for stats in run.values()):
            lines += ["95% intervals of the mean over seeds (Student's t):", "",
                      *_table(per_method, intervals, _interval_cell), ""]
        lines += ["Diagnostics:", "", *_table(per_method, DIAGNOSTIC_COLUMNS), ""]
    lines += ["## Settings", "", "```json", json.dumps(result["settings"], indent=1), "```", ""]
    lines += [findings.rstrip() if findings else f"{FINDINGS_HEADING}\n\n{FINDINGS_PLACEHOLDER}", ""]
    return "\n".join(lines)


README_MARKERS = ("<!-- synth-bench table: start -->", "<!-- synth-bench table: end -->")
WEB_README_MARKERS = ("<!-- web-bench table: start -->", "<!-- web-bench table: end -->")


def readme_markers(result: dict) -> tuple[str, str]:
    """The README block a result's table goes to: one per world."""
    return WEB_README_MARKERS if result["config"].get("world", "synth") == "web" else README_MARKERS


def readme_block(result: dict, shots: int | None = None) -> str:
    """The README's copy of one shot count's results: the main table and the DAPT-minus-base deltas.

    Args:
        result: a `bench synth` / `bench synth-merge` result (the JSON it writes).
        shots: which shot count; None takes the largest in the result.
    """
    summary = {int(k): v for k, v in result["summary"].items()}
    shots = max(summary) if shots is None else shots
    if shots not in summary:
        raise ValueError(f"shots: the result has {sorted(summary)} shots, not {shots}")
    per_method = summary[shots]
    seeds = list(result["config"]["seeds"])
    intro = (f"{shots} shots, backbone `{result['config']['backbone']}`, mean ± std over seeds {seeds}, "
             f"written by `python -m dapt_core bench synth-readme`:")
    cfg = result["config"]
    return "\n".join([intro, "", *_table(per_method, table_columns(cfg)), "", *_deltas(per_method, cfg)])


def replace_marked(text: str, block: str, markers: tuple[str, str] = README_MARKERS) -> str:
    """`text` with everything between the two marker lines replaced by `block` (markers kept)."""
    start, end = markers
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"the file has no {start!r} ... {end!r} pair to fill in")
    return text[:i + len(start)] + "\n" + block.rstrip() + "\n" + text[j:]


def _write_text(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def bench_figure(result: dict) -> Figure:
    """Per shot count, a row: the three accuracies per method, then object attention and pointing game."""
    summary = result["summary"]
    fig = Figure(figsize=(FIGURE_WIDTH_IN, FIGURE_ROW_HEIGHT_IN * len(summary)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(summary), 2, squeeze=False)
    for row, (shots, per_method) in enumerate(summary.items()):
        methods = list(per_method)
        for ax, bars, ylabel, top in ((axes[row, 0], ACCURACY_BARS, "accuracy (%)", 100.0),
                                      (axes[row, 1], ATTENTION_BARS, "fraction", 1.0)):
            width = BAR_GROUP_WIDTH / len(bars)
            x = np.arange(len(methods))
            for i, (key, label, colour) in enumerate(bars):
                means = [per_method[m][key]["mean"] for m in methods]
                stds = [per_method[m][key]["std"] for m in methods]
                ax.bar(x + (i - (len(bars) - 1) / 2) * width, means, width, yerr=stds, label=label, color=colour,
                       capsize=2)
            if key == ACCURACY_BARS[-1][0]:
                ax.axhline(100.0 / result["settings"]["task"]["n_classes"], color=CHANCE_COLOUR, linestyle="--",
                           linewidth=1, label="chance (1 / classes)")
            if key == ATTENTION_BARS[-1][0] and "object_area" in per_method[methods[0]]:
                ax.axhline(per_method[methods[0]]["object_area"]["mean"], color=CHANCE_COLOUR, linestyle="--",
                           linewidth=1, label="chance (object area)")
            ax.set_xticks(x, methods, rotation=25, ha="right", fontsize=8)
            # headroom above the axis range keeps the legend clear of the bars
            ax.set_ylim(0, top * LEGEND_HEADROOM)
            ax.set_yticks(np.linspace(0, top, 6))
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=7, loc="upper center", ncol=len(bars) + 1, frameon=False)
            ax.grid(axis="y", alpha=0.3)
        axes[row, 0].set_title(f"{shots} shot(s): accuracy per test split", fontsize=9)
        axes[row, 1].set_title(f"{shots} shot(s): attention on the object (conflicting images, true class)",
                               fontsize=9)
    return fig


def write_report(result: dict, out_dir: str | Path, name: str = "synth_bench",
                 command: str | None = None) -> dict[str, Path]:
    """Write ``<name>.json``, ``<name>.md`` (keeping an existing Findings section) and ``<name>.png``; the records'
    per-scene values go to ``<name>_scenes.jsonl`` (one line per record), which :func:`read_result` puts back."""
    out_dir = Path(out_dir)
    paths = {"json": out_dir / f"{name}.json", "markdown": out_dir / f"{name}.md", "figure": out_dir / f"{name}.png"}
    main, per_scene = split_per_scene(result)
    _write_text(paths["json"], json.dumps(main, indent=1, default=str) + "\n")
    if per_scene:
        paths["scenes"] = scenes_path(paths["json"])
        _write_text(paths["scenes"], "".join(json.dumps(line) + "\n" for line in per_scene))
    findings = _existing_findings(paths["markdown"])
    _write_text(paths["markdown"], markdown_report(main, findings, command))
    save_figure(bench_figure(main), paths["figure"])
    return paths


def scenes_path(json_path: str | Path) -> Path:
    """The per-scene file beside a result's JSON: ``<name>.json`` -> ``<name>_scenes.jsonl``."""
    json_path = Path(json_path)
    return json_path.with_name(f"{json_path.stem}_scenes.jsonl")


def read_result(path: str | Path) -> dict:
    """A result that :func:`write_report` wrote, with its per-scene values when their file is beside it.

    Raises:
        ValueError: the file (or the per-scene file) is not JSON that `bench synth` writes.
    """
    path = Path(path)
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        lines = ([json.loads(line) for line in scenes_path(path).read_text(encoding="utf-8").splitlines() if line]
                 if scenes_path(path).is_file() else [])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a JSON file written by `bench synth` ({err})") from err
    return attach_per_scene(result, lines) if lines else result


def write_examples(root: str | Path, seed: int = 1, n_aligned: int = 2, n_conflicting: int = 4,
                   size: int = 64) -> list[dict]:
    """Write a few scenes of the spurious task of `seed` (its test splits, never its training images).

    Each example is ``NN_<split>_<object>_on_<background>.png`` (native size), its exact mask
    ``..._mask.png`` (0 / 255) and a nearest-neighbour ``..._256.png`` copy for viewing, plus an
    ``examples.json`` index and a ``README.md`` table. Aligned examples show an object on its training
    background; conflicting ones show it on another class's training background, each on a different one.
    Deterministic: same arguments, same bytes.

    Returns:
        One record per example: file, mask, view, split, object, background, training_background (the
        object's), background_trains (the class trained on this background), colour, task_seed.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    task = make_task(seed, 1, size=size, n_test=EXAMPLE_CANDIDATES)
    owner = {bg: obj for obj, bg in task.pairing.items()}
    picks = [("aligned", task.test_aligned[i * EXAMPLE_CANDIDATES]) for i in range(n_aligned)]
    used: set[str] = set()
    for scene in task.test_conflicting[n_aligned * EXAMPLE_CANDIDATES:]:
        taken = {s.object for split, s in picks if split == "conflicting"}
        if len(used) < n_conflicting and scene.object not in taken and scene.background not in used:
            picks.append(("conflicting", scene))
            used.add(scene.background)
    records = []
    for i, (split, scene) in enumerate(picks):
        stem = f"{i:02d}_{split}_{scene.object}_on_{scene.background}"
        write_example_images(root, (f"{stem}.png", f"{stem}_mask.png", f"{stem}_256.png"), scene.image, scene.mask,
                             EXAMPLE_VIEW_SIZE)
        records.append({"file": f"{stem}.png", "mask": f"{stem}_mask.png", "view": f"{stem}_256.png",
                        "split": split, "object": scene.object, "background": scene.background,
                        "training_background": task.pairing[scene.object],
                        "background_trains": owner.get(scene.background), "colour": scene.colour,
                        "task_seed": seed})
    _write_text(root / "examples.json", json.dumps(records, indent=1) + "\n")
    _write_text(root / "README.md", _examples_readme(records, task.pairing, seed))
    return records


def _examples_readme(records: list[dict], pairing: dict[str, str], seed: int) -> str:
    lines = [
        "# Example images of the synthetic world",
        "",
        f"Written by `python -m dapt_core bench synth-examples --seed {seed}` "
        "(`dapt_core.experiments.background_shift_report.write_examples`); the same command always writes the same bytes.",
        "",
        f"They are test scenes of the spurious-background task of seed {seed}, the task the bundled prompt sets "
        "in `checkpoints/prompts/` were trained on (never its training images). In that task's training set "
        "every object class appears on one background only: "
        + ", ".join(f"{obj} on {bg}" for obj, bg in pairing.items()) + ".",
        "",
        "- *aligned*: the object on its own training background (a background reader gets it right);",
        "- *conflicting*: the object on another class's training background (a background reader names that "
        "other class).",
        "",
        "Each `NN_*.png` is the 64 px native image, `*_mask.png` its exact object mask (255 = object, 0 = "
        "background) and `*_256.png` a nearest-neighbour upscale for viewing.",
        "",
        "| file | split | object | colour | background | object's training background | background trains |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(f"| `{r['file']}` | {r['split']} | {r['object']} | {r['colour']} | {r['background']} | "
                     f"{r['training_background']} | {r['background_trains'] or '-'} |")
    return "\n".join(lines) + "\n"
