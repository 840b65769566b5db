"""Figures of a grid's tables (matplotlib, Agg): accuracy against shots per method (few-shot), against the
selected fraction per selection method (data-efficient), and base / novel / HM bars beside the published
figures (base-to-novel). They read the same :class:`~dapt_core.grid.aggregate.Table` objects as the
Markdown and CSV files, so figure and tables always agree.
"""

from __future__ import annotations

import math
from pathlib import Path

from dapt_core.fileio import atomic_path
from dapt_core.grid.aggregate import AVERAGE, Table
from dapt_core.grid.config import GridConfig
from dapt_core.grid.methods import method_of

PANELS_PER_ROW = 4
PANEL_INCHES = 3.2
DPI = 120


def _figure(panels: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(PANELS_PER_ROW, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL_INCHES * cols, PANEL_INCHES * rows), squeeze=False)
    for ax in axes.flat[panels:]:
        ax.set_visible(False)
    return plt, fig, list(axes.flat[:panels])


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)
    return path


def _line(ax, xs: list[float], cells: list, label: str) -> None:
    points = [(x, c) for x, c in zip(xs, cells) if c is not None]
    if points:
        ax.errorbar([x for x, _ in points], [c.mean for _, c in points], yerr=[c.std or 0 for _, c in points],
                    marker="o", capsize=3, label=label)


def plot_few_shot(cfg: GridConfig, tables: list[Table], path: Path) -> Path:
    """One panel per data set and the average: accuracy against shots, a line per method."""
    columns = tables[0].columns
    plt, fig, axes = _figure(len(columns))
    shots = [float(s) for s in cfg.shots]
    for col, ax in enumerate(axes):
        for m, method in enumerate(cfg.methods):
            _line(ax, shots, [t.rows[m].cells[col] for t in tables], method_of(method, cfg.dapt).title)
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [f"{s:g}" for s in shots])
        ax.set_title(columns[col], fontweight="bold" if columns[col] == AVERAGE else None)
        ax.set_xlabel("shots per class")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize="small")
    return _save(plt, fig, path)


def plot_data_efficient(cfg: GridConfig, tables: list[Table], path: Path) -> Path:
    """One panel per table (method, shots): the data sets' average against the fraction, a line per selection."""
    plt, fig, axes = _figure(len(tables))
    fractions = [float(f) for f in cfg.fractions]
    for table, ax in zip(tables, axes):
        for s, selection in enumerate(cfg.selection_methods):
            rows = table.rows[s * len(fractions):(s + 1) * len(fractions)]
            _line(ax, fractions, [r.cells[-1] for r in rows], selection)
        ax.set_xscale("log")
        ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
        ax.set_title(table.title.split(",")[0] + f" ({AVERAGE.lower()})", fontsize="medium")
        ax.set_xlabel("share of the training draw kept")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(plt, fig, path)


def plot_base_to_novel(cfg: GridConfig, tables: list[Table], path: Path) -> Path:
    """Grouped bars of the average table: base, novel and HM per row, published rows hatched."""
    import numpy as np

    table = tables[0]
    plt, fig, axes = _figure(1)
    ax = axes[0]
    fig.set_size_inches(max(PANEL_INCHES * 2, 1.2 * len(table.rows)), PANEL_INCHES * 1.3)
    x = np.arange(len(table.rows))
    width = 0.8 / len(table.columns)
    for c, column in enumerate(table.columns):
        values = [row.cells[c].mean if row.cells[c] else np.nan for row in table.rows]
        bars = ax.bar(x + (c - (len(table.columns) - 1) / 2) * width, values, width, label=column)
        for bar, row in zip(bars, table.rows):
            if row.meta.get("source") == "published":
                bar.set_hatch("//")
    ax.set_xticks(x, [row.label for row in table.rows], rotation=30, ha="right", fontsize="small")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(table.title, fontsize="medium")
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, path)


PLOTS = {"few_shot": ("accuracy_vs_shots.png", plot_few_shot),
         "data_efficient": ("accuracy_vs_fraction.png", plot_data_efficient),
         "base_to_novel": ("base_to_novel.png", plot_base_to_novel)}


def plot_tables(cfg: GridConfig, tables: list[Table], folder: Path) -> Path:
    """Draws the setting's figure into ``folder``; returns its path."""
    name, draw = PLOTS[cfg.setting]
    return draw(cfg, tables, Path(folder) / name)
