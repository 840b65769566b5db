"""A grid's results in the paper's table layout: mean ± std over seeds per data set, and the average.

- few-shot: one table per shot count, a row per method, a column per data set and the average;
- base-to-novel: the average over the data sets (base, novel, harmonic mean) with the published figures
  beside ours, then one such table per data set;
- data-efficient: per method and shot count, a row per selection method and fraction.

Spread is the population standard deviation over seeds (``np.std``, as CoOp's ``parse_test_res.py``). The
average of a row is taken per seed over the data sets, then mean ± std over the seeds that every data set
has; the harmonic mean is that of the mean base and mean novel accuracies (the papers' convention).
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from dapt_core.grid.config import GridConfig
from dapt_core.grid.methods import method_of
from dapt_core.grid.published import BASE_TO_NOVEL_AVERAGE, CAVEAT, PUBLISHED_DATASETS, SOURCE

AVERAGE = "Average"
MISSING = "—"
PARTIAL_MARK = "*"
# the papers' names of CoOp's data sets, for the column headers
DATASET_TITLES = {"imagenet": "ImageNet", "caltech101": "Caltech101", "oxford_pets": "OxfordPets",
                  "stanford_cars": "StanfordCars", "oxford_flowers": "Flowers102", "food101": "Food101",
                  "fgvc_aircraft": "FGVCAircraft", "sun397": "SUN397", "dtd": "DTD", "eurosat": "EuroSAT",
                  "ucf101": "UCF101"}
B2N_METRICS = ("base", "novel", "hm")
B2N_COLUMNS = ("Base", "Novel", "HM")
CSV_FIELDS = ("setting", "table", "row", "column", "method", "shots", "selection", "fraction", "mean", "std",
              "n_seeds", "source")


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float | None  # None: a derived figure (harmonic mean of means, published)
    n: int  # seeds behind it (0 for a published figure)

    def text(self, seeds: int) -> str:
        spread = "" if self.std is None else f" ± {self.std:.2f}"
        partial = PARTIAL_MARK if 0 < self.n < seeds else ""
        return f"{self.mean:.2f}{spread}{partial}"


def stat(values: Sequence[float]) -> Stat | None:
    """Mean ± population std of the values; None for none."""
    if not values:
        return None
    array = np.asarray(values, dtype=float)
    return Stat(float(array.mean()), float(array.std()), len(array))


@dataclass
class Row:
    label: str
    cells: list[Stat | None]
    meta: dict = field(default_factory=dict)  # method, shots, selection, fraction, source (for the CSV)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[Row] = field(default_factory=list)


def metric_value(record: dict, metric: str) -> float:
    """The number a table reads from a cell's metrics record."""
    metrics = record["metrics"]
    if metric in ("base", "novel"):
        return float(metrics[metric]["accuracy"])
    return float(metrics[metric])


def _group(records: list[dict]) -> dict[tuple, dict[int, dict]]:
    """(dataset, method, shots, selection, fraction) -> {seed: record}."""
    groups: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for record in records:
        ident = record["identity"]
        key = (ident["dataset"], ident["method"], ident["shots"], ident["selection"], ident["fraction"])
        groups[key][ident["seed"]] = record
    return groups


def _stats(groups: dict, datasets: list[str], rest: tuple, metric: str) -> list[Stat | None]:
    """Per data set, then the average, of one row's metric."""
    per_seed = [{seed: metric_value(r, metric) for seed, r in groups.get((d, *rest), {}).items()}
                for d in datasets]
    cells = [stat(list(values.values())) for values in per_seed]
    common = set.intersection(*(set(v) for v in per_seed)) if per_seed else set()
    cells.append(stat([float(np.mean([v[s] for v in per_seed])) for s in sorted(common)]))
    return cells


def _titles(datasets: list[str]) -> list[str]:
    return [DATASET_TITLES.get(d, d) for d in datasets] + [AVERAGE]


def few_shot_tables(cfg: GridConfig, groups: dict, datasets: list[str]) -> list[Table]:
    tables = []
    for shots in cfg.shots:
        table = Table(f"{shots}-shot accuracy (%)", _titles(datasets))
        for method in cfg.methods:
            cells = _stats(groups, datasets, (method, shots, None, None), "accuracy")
            table.rows.append(Row(method_of(method, cfg.dapt).title, cells, {"method": method, "shots": shots}))
        tables.append(table)
    return tables


def _b2n_row(label: str, base: Stat | None, novel: Stat | None, meta: dict) -> Row:
    from dapt_core.train import harmonic_mean

    hm = None
    if base is not None and novel is not None:
        hm = Stat(harmonic_mean(base.mean, novel.mean), None, min(base.n, novel.n))
    return Row(label, [base, novel, hm], meta)


def base_to_novel_tables(cfg: GridConfig, groups: dict, datasets: list[str]) -> list[Table]:
    shots = cfg.shots[0] if len(cfg.shots) == 1 else None
    tables = []
    for index, name in [(len(datasets), AVERAGE)] + list(enumerate(DATASET_TITLES.get(d, d) for d in datasets)):
        title = (f"Average over {len(datasets)} data set(s): base-to-novel accuracy (%)" if name == AVERAGE
                 else f"{name}: base-to-novel accuracy (%)")
        table = Table(title, list(B2N_COLUMNS))
        shown: set[str] = set()
        for method in cfg.methods:
            for k in cfg.shots:
                base, novel = (_stats(groups, datasets, (method, k, None, None), m)[index] for m in ("base", "novel"))
                label = method_of(method, cfg.dapt).title + ("" if shots is not None else f" ({k}-shot)")
                table.rows.append(_b2n_row(label, base, novel, {"method": method, "shots": k}))
            published = method_of(method, cfg.dapt).published
            if name == AVERAGE and published in BASE_TO_NOVEL_AVERAGE and published not in shown:
                table.rows.append(_published_row(published))  # the paper's figure right under ours
                shown.add(published)
        if name == AVERAGE:
            table.rows += [_published_row(m) for m in BASE_TO_NOVEL_AVERAGE if m not in shown]
        tables.append(table)
    return tables


def _published_row(method: str) -> Row:
    published = BASE_TO_NOVEL_AVERAGE[method]
    return Row(f"{published.method} (published)", [Stat(published.base, None, 0), Stat(published.novel, None, 0),
                                                   Stat(published.hm, None, 0)], {"source": "published"})


def data_efficient_tables(cfg: GridConfig, groups: dict, datasets: list[str]) -> list[Table]:
    tables = []
    for method in cfg.methods:
        for shots in cfg.shots:
            title = method_of(method, cfg.dapt).title
            table = Table(f"{title}, {shots}-shot, selected share of the draw: accuracy (%)", _titles(datasets))
            for selection in cfg.selection_methods:
                for fraction in cfg.fractions:
                    rest = (method, shots, selection, float(fraction))
                    table.rows.append(Row(f"{selection} {fraction:g}", _stats(groups, datasets, rest, "accuracy"),
                                          {"method": method, "shots": shots, "selection": selection,
                                           "fraction": fraction}))
            tables.append(table)
    return tables


def build_tables(cfg: GridConfig, records: list[dict], datasets: list[str]) -> list[Table]:
    """The setting's tables from the finished cells' metrics records."""
    groups = _group(records)
    builder = {"few_shot": few_shot_tables, "base_to_novel": base_to_novel_tables,
               "data_efficient": data_efficient_tables}[cfg.setting]
    return builder(cfg, groups, datasets)


def notes(cfg: GridConfig, datasets: list[str]) -> list[str]:
    lines = [f"Mean ± std over seeds {', '.join(map(str, cfg.seeds))} (population std); {AVERAGE}: the mean "
             "over the data sets per seed, then mean ± std over the seeds every data set has; "
             f"{PARTIAL_MARK}: fewer seeds than configured; {MISSING}: no finished run."]
    if cfg.setting != "base_to_novel":
        lines.append("No published figures beside these: only the paper's base-to-novel averages are "
                     "transcribed (dapt_core/grid/published.py).")
    else:
        lines.append("HM: harmonic mean of the mean base and mean novel accuracies.")
        lines.append(f"Published rows: {SOURCE} They are {CAVEAT}"
                     + ("." if len(datasets) == PUBLISHED_DATASETS
                        else f"; ours average {len(datasets)} data set(s), theirs {PUBLISHED_DATASETS}."))
    return lines


def to_markdown(cfg: GridConfig, tables: list[Table], datasets: list[str]) -> str:
    seeds = len(cfg.seeds)
    out = [f"# Grid results: {cfg.setting.replace('_', '-')} ({cfg.backbone})", ""]
    for table in tables:
        out += [f"## {table.title}", "", "| | " + " | ".join(table.columns) + " |",
                "|---|" + "---:|" * len(table.columns)]
        for row in table.rows:
            out.append(f"| {row.label} | " + " | ".join(c.text(seeds) if c else MISSING for c in row.cells) + " |")
        out.append("")
    out += [f"- {line}" for line in notes(cfg, datasets)]
    return "\n".join(out) + "\n"


def to_csv(cfg: GridConfig, tables: list[Table]) -> str:
    """Long format: one line per table cell that has a number."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for table in tables:
        for row in table.rows:
            source = SOURCE if row.meta.get("source") == "published" else "this grid"
            for column, cell in zip(table.columns, row.cells):
                if cell is None:
                    continue
                writer.writerow({"setting": cfg.setting, "table": table.title, "row": row.label, "column": column,
                                 "method": row.meta.get("method", ""), "shots": row.meta.get("shots", ""),
                                 "selection": row.meta.get("selection", ""), "fraction": row.meta.get("fraction", ""),
                                 "mean": round(cell.mean, 4), "std": "" if cell.std is None else round(cell.std, 4),
                                 "n_seeds": cell.n, "source": source})
    return buffer.getvalue()
