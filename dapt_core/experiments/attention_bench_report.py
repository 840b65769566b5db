"""The attention benchmark's Markdown table and figure, from the JSON that
:func:`dapt_core.experiments.attention_bench.run_attention_bench` returns."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from dapt_core.attention.descriptions import METHOD_DESCRIPTIONS

# issue 12's targets for the best method on conflicting scenes
TARGET_POINTING = 0.8
TARGET_LIFT = 2.5
PANELS = (("pointing", "pointing game", TARGET_POINTING), ("lift", "energy share / area share", TARGET_LIFT),
          ("deletion_auc", "deletion AUC (lower = more faithful)", None),
          ("insertion_auc", "insertion AUC (higher = more faithful)", None))


def _cell(pair: list[float], digits: int = 2) -> str:
    return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def method_means(result: dict) -> dict[str, dict[str, list[float]]]:
    """Per method, each metric averaged over the prompt sets within each seed, then mean and std over seeds."""
    per_seed, sets = result["per_seed"], list(result["prompt_sets"])
    methods = result["config"]["methods"]
    out = {}
    for method in methods:
        out[method] = {}
        for metric in ("pointing", "lift", "energy_share", "area_share", "top_k", "deletion_auc", "insertion_auc"):
            seed_values = [np.mean([per_seed[seed][name][method][metric] for name in sets]) for seed in per_seed]
            out[method][metric] = [float(np.mean(seed_values)), float(np.std(seed_values))]
    return out


def best_method(result: dict) -> str:
    """The method with the highest pointing game over all prompt sets (ties: the higher lift)."""
    means = method_means(result)
    return max(means, key=lambda m: (means[m]["pointing"][0], means[m]["lift"][0]))


def render_markdown(result: dict, figure_name: str) -> str:
    """The report: headline per method, then every metric per prompt set and method."""
    cfg, sets = result["config"], result["prompt_sets"]
    means = method_means(result)
    best = best_method(result)
    meets = means[best]["pointing"][0] >= TARGET_POINTING and means[best]["lift"][0] >= TARGET_LIFT
    lines = [
        "# Attribution methods on conflicting synthetic scenes",
        "",
        f"Backbone `{result['backbone']}` ({result['pretrained']}); prompt sets: "
        + ", ".join(f"`{n}` ({label})" for n, label in sets.items()) + f". Seeds {', '.join(map(str, cfg['seeds']))}, "
        f"{result['n_scenes']} scenes per seed ({cfg['per_class']} per class), every object on a background other "
        "than the one its prompt sets were trained with; every map explains the true class. "
        f"Mean ± std over seeds. CPU time of the run: {result['cpu_seconds']:.0f} s "
        f"(wall {result['wall_seconds']:.0f} s).",
        "",
        "Command: `python -m dapt_core bench attention --seed "
        + " ".join(map(str, cfg["seeds"])) + f" --per-class {cfg['per_class']}`",
        "",
        "## Per method (averaged over the prompt sets)",
        "",
        "| method | pointing game | energy share | area share | lift | top-k ∩ | deletion AUC | insertion AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, m in means.items():
        name = f"**{method}**" if method == best else method
        lines.append(f"| {name} | {_cell(m['pointing'])} | {_cell(m['energy_share'])} | {_cell(m['area_share'])} | "
                     f"{_cell(m['lift'])}x | {_cell(m['top_k'])} | {_cell(m['deletion_auc'], 3)} | "
                     f"{_cell(m['insertion_auc'], 3)} |")
    lines += [
        "",
        f"Best by pointing game: **{best}** ({_cell(means[best]['pointing'])} pointing, "
        f"{_cell(means[best]['lift'])}x lift); issue target pointing >= {TARGET_POINTING} and lift >= "
        f"{TARGET_LIFT}x: **{'met' if meets else 'not met'}**.",
        "",
        f"![pointing game, lift and faithfulness per method and prompt set]({figure_name})",
        "",
        "## Per prompt set and method",
        "",
        "| prompt set | method | pointing | energy share | lift | top-k ∩ | deletion AUC | insertion AUC | "
        "accuracy | ms / map |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in sets:
        for method, m in result["summary"][name].items():
            lines.append(f"| {name} | {method} | {_cell(m['pointing'])} | {_cell(m['energy_share'])} | "
                         f"{_cell(m['lift'])}x | {_cell(m['top_k'])} | {_cell(m['deletion_auc'], 3)} | "
                         f"{_cell(m['insertion_auc'], 3)} | {_cell(m['accuracy'])} | "
                         f"{1000 * m['seconds_per_map'][0]:.0f} |")
    lines += ["", "## Methods", ""]
    lines += [f"- `{method}`: {METHOD_DESCRIPTIONS[method]}" for method in cfg["methods"]]
    lines += ["", "Lift = mean energy share / mean area share. Top-k ∩: share of the map's k highest pixels on "
              "the object, k = the object's area" + ("" if cfg["top_k"] is None else f" (here k = {cfg['top_k']})")
              + f". Deletion / insertion: {cfg['steps']} steps, hidden pixels at the mean colour, AUC of the "
              "true class's probability. ms / map: wall time of the maps on a shared CPU.", ""]
    return "\n".join(lines)


README_MARKERS = ("<!-- attention-bench table: start -->", "<!-- attention-bench table: end -->")


def readme_block(result: dict) -> str:
    """README's copy of the per-method table (Grad-CAM, the official cue, first), with the run's settings."""
    cfg = result["config"]
    means = method_means(result)
    order = sorted(means, key=lambda m: (m != "gradcam", cfg["methods"].index(m)))
    lines = [f"Backbone `{result['backbone']}`, {result['n_scenes']} conflicting scenes per seed, seeds "
             f"{', '.join(map(str, cfg['seeds']))}, mean ± std over seeds of the means over "
             f"{len(result['prompt_sets'])} prompt sets; written by `python -m dapt_core bench attention-readme` "
             f"from `bench attention`'s JSON (best by pointing game: `{best_method(result)}`):", "",
             "| method | pointing game | energy share | lift over area share | deletion AUC | insertion AUC |",
             "|---|---|---|---|---|---|"]
    for method in order:
        m = means[method]
        lines.append(f"| {method} | {_cell(m['pointing'])} | {_cell(m['energy_share'])} | {_cell(m['lift'])}x | "
                     f"{_cell(m['deletion_auc'], 3)} | {_cell(m['insertion_auc'], 3)} |")
    return "\n".join(lines)


def render_figure(result: dict) -> Figure:
    """Four panels (pointing, lift, deletion AUC, insertion AUC): bars per method and prompt set, seed std."""
    methods, sets = result["config"]["methods"], list(result["prompt_sets"])
    fig = Figure(figsize=(12, 7.5), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    width = 0.8 / len(sets)
    x = np.arange(len(methods))
    for ax, (metric, title, target) in zip(axes, PANELS):
        for j, name in enumerate(sets):
            values = np.array([result["summary"][name][m][metric] for m in methods])  # (M, 2)
            ax.bar(x + (j - (len(sets) - 1) / 2) * width, values[:, 0], width, yerr=values[:, 1], capsize=2,
                   label=name)
        if target is not None:
            ax.axhline(target, color="black", linestyle="--", linewidth=1, label=f"target {target:g}")
        ax.set_xticks(x, methods, fontsize=9)
        ax.set_title(title, fontsize=11)
    axes[1].axhline(1.0, color="grey", linestyle=":", linewidth=1)
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Attribution on conflicting scenes, {result['backbone']}, seeds "
                 f"{', '.join(map(str, result['config']['seeds']))} (mean ± std)", fontsize=12)
    return fig
