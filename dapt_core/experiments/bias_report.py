"""What the bias suite and the gates write: Markdown tables, a figure, the JSON.

The numbers come from :func:`dapt_core.experiments.bias_suite.run_suite` and
:func:`dapt_core.experiments.bias_gates.run_gates`; nothing here measures anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from dapt_core.experiments.bias_suite import VARIANTS, SuiteScenes, variant_input
from dapt_core.experiments.gate_thresholds import ATTENTION_METRIC_WORDS, FIRST_REGISTRATION

SHOWN = {  # variant -> what the model is shown, for the table
    "original": "the scene (object on a home background)",
    "only_fg": "the object, every other pixel at the data set's mean colour",
    "only_bg": "the same background rendered without the object",
    "no_fg": "the scene with the object's pixels at the mean colour (silhouette kept)",
    "mixed_same": "the object on a fresh background of its own class's home set",
    "mixed_rand": "the object on a fresh background of another class's home set (never its own)",
}
EXAMPLES = 3  # scenes shown in the figure
VERDICT = {True: "pass", False: "FAIL", None: "not measured"}
# the card's line of downstream accuracies: the headroom split first, then these others in this order
CARD_SPLIT_ORDER = ("test_conflicting", "test_aligned", "test_balanced")
CARD_MARKERS = ("<!-- gates verdict: start -->", "<!-- gates verdict: end -->")  # registration v1's block


def card_markers(result: dict) -> tuple[str, str]:
    """The card's marker pair for a result's registration: v1 (or a run before registrations had names, or none)
    keeps the first pair; another registration has its own block, so no verdict overwrites another's."""
    name = result.get("registration") or FIRST_REGISTRATION
    if name == FIRST_REGISTRATION:
        return CARD_MARKERS
    return f"<!-- gates {name} verdict: start -->", f"<!-- gates {name} verdict: end -->"


def suite_markdown(result: dict, figure_name: str | None, command: str | None) -> str:
    """The suite's report: one row per variant, BG-Gap and Only-BG over chance below."""
    lines = [f"# Background bias of `{result['backbone']}` ({result['pretrained']}): an ImageNet-9-style suite", "",
             f"World `{result['world']}`; home backgrounds: {result['same_rule']}. Seed {result['seed']}, "
             f"{result['per_class']} base scenes per class ({result['n']} in all); classifier: {result['classifier']}"
             f". Accuracy in percent with its 95% Wilson interval; chance {result['chance']:.2f}%. After Xiao et "
             "al., ICLR 2021 (Only-BG here is the true background, rendered without the object).", "",
             "| variant | what the model sees | accuracy | 95% interval |", "|---|---|---|---|"]
    for v in VARIANTS:
        low, high = result[f"{v}_ci"]
        lines.append(f"| {v} | {SHOWN[v]} | {result[v]:.2f} | [{low:.2f}, {high:.2f}] |")
    low, high = result["bg_gap_ci"]
    lines += ["", f"**BG-Gap** (Mixed-Same - Mixed-Rand): **{result['bg_gap']:.2f} points** (paired 95% interval "
              f"[{low:.2f}, {high:.2f}]). **Only-BG**: {result['only_bg']:.2f}% = "
              f"**{result['only_bg_over_chance']:.2f} x chance** (a reader of the background class alone could reach "
              f"{result['only_bg_ceiling']:.2f}% here: a background that is home to k classes names the right one "
              "1/k of the time).", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    if figure_name:
        lines += [f"![accuracy per variant and example scenes]({figure_name})", ""]
    return "\n".join(lines)


def _display(scenes: SuiteScenes, variant: str, index: int, mean, std) -> np.ndarray:
    """A variant as the model sees it, back in [0, 1] RGB (hidden pixels show as the mean colour)."""
    x = variant_input(scenes, variant, mean, std, slice(index, index + 1))[0].numpy().transpose(1, 2, 0)
    return np.clip(x * np.asarray(std) + np.asarray(mean), 0.0, 1.0)


def suite_figure(result: dict, scenes: SuiteScenes | None = None, mean=None, std=None) -> Figure:
    """Accuracy per variant with its interval and the chance line; with ``scenes``, a few examples beside it."""
    rows = min(EXAMPLES, len(scenes.labels)) if scenes is not None else 0
    fig = Figure(figsize=(6.5 + (1.3 * len(VARIANTS) if rows else 0), max(3.2, 1.3 * rows + 0.6)))
    grid = fig.add_gridspec(max(rows, 1), 1 + (len(VARIANTS) if rows else 0),
                            width_ratios=[5] + [1] * (len(VARIANTS) if rows else 0))
    ax = fig.add_subplot(grid[:, 0])
    acc = np.array([result[v] for v in VARIANTS])
    ci = np.array([result[f"{v}_ci"] for v in VARIANTS])
    ax.bar(range(len(VARIANTS)), acc, yerr=[acc - ci[:, 0], ci[:, 1] - acc], capsize=3, color="#4C72B0")
    ax.axhline(result["chance"], color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(range(len(VARIANTS)), [v.replace("_", "-") for v in VARIANTS], rotation=30, fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{result['backbone']}: BG-Gap {result['bg_gap']:.1f} points, seed {result['seed']}", fontsize=9)
    ax.legend(fontsize=8)
    if rows:
        step = max(1, len(scenes.labels) // rows)
        for r in range(rows):
            for c, variant in enumerate(VARIANTS):
                sub = fig.add_subplot(grid[r, 1 + c])
                sub.imshow(_display(scenes, variant, r * step, mean, std), interpolation="nearest")
                sub.set_xticks([])
                sub.set_yticks([])
                if r == 0:
                    sub.set_title(variant.replace("_", "-"), fontsize=7)
    fig.tight_layout()
    return fig


def gate_table(result: dict) -> list[str]:
    """The gates' Markdown table: measured value, threshold and verdict per gate."""
    lines = ["| gate | measured | threshold | verdict |", "|---|---|---|---|"]
    for row in result["gates"]:
        value = row["measured"]
        shown = (f"[{value[0]:.4f}, {value[1]:.4f}]" if isinstance(value, list)
                 else "-" if value is None else f"{value:.2f}")
        lines.append(f"| {row['gate']} | {shown} | {row['threshold']} | {VERDICT[row['passed']]} |")
    return lines


def card_block(result: dict, result_path: str, figure_path: str | None) -> str:
    """The model card's verdict block, from a ``bench gates`` result (paths relative to the card)."""
    suite, head = result["suite"], result["headroom"]
    split = result["thresholds"]["headroom_split"]
    name = result.get("registration") or FIRST_REGISTRATION
    title = f"Measured verdict: seed {result['seed']}" if name == FIRST_REGISTRATION else \
        f"Measured verdict of registration {name}: seed {result['seed']}"
    lines = [f"### {title}", "",
             f"Copied from `{result_path}` by `python -m dapt_core bench gates-card`; the run: "
             f"`{result.get('command') or 'python -m dapt_core bench gates'}` ({result['seconds']:.0f} s, weights "
             f"sha256 `{(result.get('weights_sha256') or 'none')[:16]}...`). "
             + ("Registered settings." if result["registered"] else "**Not the registered settings: no verdict.**")
             + f" Overall: **{VERDICT[result['passed']]}**.", "", *gate_table(result), "",
             "| variant | " + " | ".join(VARIANTS) + " | BG-Gap | chance |", "|---" * (len(VARIANTS) + 3) + "|",
             "| zero-shot accuracy (%) | " + " | ".join(f"{suite[v]:.2f}" for v in VARIANTS)
             + f" | {suite['bg_gap']:.2f} [{suite['bg_gap_ci'][0]:.2f}, {suite['bg_gap_ci'][1]:.2f}] | "
             f"{suite['chance']:.2f} |", "",
             "Downstream task " + "; ".join(
                 f"on `{s}`: zero-shot {head[f'zero_shot_{s}']:.2f}%, CoOp {head[f'coop_{s}']:.2f}%"
                 for s in (split, *(s for s in CARD_SPLIT_ORDER if s != split))) + ".", ""]
    if figure_path:
        lines += [f"![bias suite of {result['backbone']}, seed {result['seed']}]({figure_path})", ""]
    return "\n".join(lines)


def gates_markdown(result: dict, command: str | None, suite_stem: str | None = None) -> str:
    """The gates' report: one row per gate with its verdict, then the measurements behind them."""
    suite, head, att = result["suite"], result["headroom"], result["attention"]
    lines = [f"# Gates of `{result['backbone']}` ({result['pretrained']}), seed {result['seed']}", "",
             f"World `{result['world']}`, {result['n_classes']} classes; weights `{result.get('weights')}` (sha256 "
             f"`{result.get('weights_sha256')}`). Thresholds and settings: "
             "`dapt_core/experiments/gate_thresholds.py`"
             + ("" if result["registered"] else " (**this run used other settings than the registered ones**)")
             + f". Overall: **{VERDICT[result['passed']]}**.", "", *gate_table(result)]
    lines += ["", f"Bias suite ({suite['per_class']} scenes per class): " + ", ".join(
        f"{v} {suite[v]:.2f}%" for v in VARIANTS) + f"; chance {suite['chance']:.2f}%.", "",
        f"Downstream task: {result['task']}. Zero-shot (CoOp initialised from \"a photo of a\", untrained) and "
        f"CoOp ({result['settings']['shots']} shots, {result['settings']['epochs']} epochs, batch "
        f"{result['settings']['batch_size']}, lr {result['settings']['lr']}), accuracy in percent:", "",
        "| split | zero-shot | CoOp |", "|---|---|---|"]
    for split in ("test_aligned", "test_balanced", "test_conflicting"):
        lines.append(f"| {split} | {head[f'zero_shot_{split}']:.2f} | {head[f'coop_{split}']:.2f} |")
    lo, hi = att["difference_ci"]
    lines += ["", f"Control prompt sets on the task's {att['n']} conflicting scenes ({_controls_words(att)}; the "
              f"object covers {att['area_share']:.3f} of the image on average):", "",
              "| control | energy share on the object | pointing game | accuracy (%) |", "|---|---|---|---|"]
    for kind in ("balanced", "background"):
        lines.append(f"| {kind} | {att[f'{kind}_energy_share']:.4f} | {att[f'{kind}_pointing']:.4f} | "
                     f"{att[f'{kind}_accuracy_conflicting']:.2f} |")
    lines += ["", f"Difference balanced - background: {att['difference']:.4f} (paired 95% interval [{lo:.4f}, "
              f"{hi:.4f}]). Run time {result['seconds']:.0f} s.", ""]
    others = [m for m in ("energy_share", "pointing") if f"{m}_difference_ci" in att and m != att.get("metric")]
    for metric in others:  # the metric the gate does not read, for information
        low, high = att[f"{metric}_difference_ci"]
        lines += [f"Not gated: the same difference in {metric.replace('_', ' ')}, {att[f'{metric}_difference']:.4f} "
                  f"[{low:.4f}, {high:.4f}].", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    if suite_stem:
        lines += [f"The bias suite's own report: [`{suite_stem}.md`]({suite_stem}.md).", "",
                  f"![bias suite]({suite_stem}.png)", ""]
    return "\n".join(lines)


def _controls_words(att: dict) -> str:
    """What the control table measures: the map, its target, and over how many control pairs (v1: one, Grad-CAM)."""
    method = "Grad-CAM" if att.get("cam_method", "gradcam") == "gradcam" else att["cam_method"]
    repeats = att.get("control_repeats", 1)
    gated = ATTENTION_METRIC_WORDS[att.get("metric", "energy_share")]
    pooled = "" if repeats == 1 else f", each scene averaged over {repeats} control pairs"
    return f"{method} of the true class{pooled}; the gate reads the {gated}"


def write_suite(result: dict, out_dir: str | Path, stem: str, command: str | None, scenes: SuiteScenes | None = None,
                mean=None, std=None) -> dict[str, str]:
    """Writes ``<stem>.json``, ``<stem>.md`` and ``<stem>.png``; returns their paths by kind."""
    from dapt_core.fileio import write_bytes_atomic
    from dapt_core.viz.figure import save_figure

    out = Path(out_dir)
    record = {**result, "command": command}
    written = {"json": write_bytes_atomic(out / f"{stem}.json", (json.dumps(record, indent=1) + "\n").encode()),
               "png": save_figure(suite_figure(result, scenes, mean, std), out / f"{stem}.png")}
    written["md"] = write_bytes_atomic(out / f"{stem}.md", suite_markdown(result, f"{stem}.png", command).encode())
    return {k: str(v) for k, v in written.items()}


def write_gates(result: dict, out_dir: str | Path, stem: str, command: str | None,
                suite_stem: str | None = None) -> dict[str, str]:
    """Writes ``<stem>.json`` and ``<stem>.md`` (linking the suite's report ``suite_stem`` in the same folder)."""
    from dapt_core.fileio import write_bytes_atomic

    out = Path(out_dir)
    record = {**result, "command": command}
    return {"json": str(write_bytes_atomic(out / f"{stem}.json", (json.dumps(record, indent=1) + "\n").encode())),
            "md": str(write_bytes_atomic(out / f"{stem}.md", gates_markdown(result, command, suite_stem).encode()))}
