"""The cells of a grid: one training run each, in a folder named by its place in the grid.

A cell's folder is ``OUT/<setting>/<data set>/<method>/<shots>shot[-<selection>-<fraction>]/seed<seed>`` and
holds ``cell.json`` (what the cell is, written when it starts), ``state.pt`` while it trains (the training
state it resumes from), then ``prompts.safetensors`` (the prompt set) and ``metrics.json`` (its results).
A cell is finished when its metrics file is there and valid for this very cell; a folder that holds a run
with other settings is refused, naming what differs, so that no result is silently mixed with another.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dapt_core.constants import DAPT_RECORD_DEFAULTS
from dapt_core.grid.config import GridConfig, GridConfigError

log = logging.getLogger(__name__)

CELL_FORMAT = "dapt-grid-cell"
CELL_VERSION = 1
CELL_FILE = "cell.json"
METRICS_FILE = "metrics.json"
PROMPTS_FILE = "prompts.safetensors"
STATE_FILE = "state.pt"
# TrainConfig fields that change how fast a cell runs, not what it computes
SPEED_ONLY_TRAIN_FIELDS = ("eval_batch_size", "num_workers")
MAX_LISTED_MISMATCHES = 5


@dataclass(frozen=True)
class Cell:
    setting: str  # a value of dapt_core.grid.config.SETTINGS
    dataset: str  # the data set's name in the tables and the folder tree
    data: str  # its data spec (coop:NAME:ROOT or imagefolder:PATH)
    method: str  # a key of dapt_core.grid.methods.METHODS
    shots: int  # images per class of the training draw (0 = every image)
    seed: int
    folder: str  # where the cell writes
    backbone: str = "ViT-B-16"
    train: dict = field(default_factory=dict)  # TrainConfig fields other than seed and shots
    dapt: dict = field(default_factory=dict)  # DaptConfig fields other than the cue
    learner_options: dict = field(default_factory=dict)  # options of the method's learner
    fraction: float | None = None  # data_efficient: share of the training draw kept
    selection: str | None = None  # data_efficient: how that share is chosen
    selection_options: dict = field(default_factory=dict)  # data_efficient: other SelectionConfig fields
    mask_dir: str | None = None  # the data set's mask tree, for the mask cue
    weights: str | None = None  # explicit backbone weight file
    device: str | None = None

    @property
    def key(self) -> str:
        """The cell's folder relative to the grid's output folder: its name in reports."""
        return "/".join(Path(self.folder).parts[-5:])

    def identity(self) -> dict[str, Any]:
        """What makes the cell's result what it is (no paths, no speed-only settings), JSON-normalised."""
        train = {k: v for k, v in self.train.items() if k not in SPEED_ONLY_TRAIN_FIELDS}
        ident = {"setting": self.setting, "dataset": self.dataset, "method": self.method, "shots": self.shots,
                 "seed": self.seed, "backbone": self.backbone, "train": train, "dapt": self.dapt,
                 "learner_options": self.learner_options, "fraction": self.fraction, "selection": self.selection,
                 "selection_options": self.selection_options}
        return json.loads(json.dumps(ident, sort_keys=True))


def dataset_spec(entry: str, data_root: str | None) -> tuple[str, str]:
    """(name, data spec) of a config's data set entry: a CoOp key read under ``data_root``, or a spec."""
    if ":" not in entry:
        return entry, f"coop:{entry}:{data_root}"
    kind, _, rest = entry.partition(":")
    if kind == "coop":
        return rest.partition(":")[0], entry
    return Path(rest).name or entry, entry


def _variant(shots: int, selection: str | None, fraction: float | None) -> str:
    name = f"{shots}shot" if shots > 0 else "allshot"
    return name if selection is None else f"{name}-{selection}-{fraction:g}"


def normalised_settings(cfg: GridConfig) -> dict[str, Any]:
    """The config's train, DAPT, learner and selection settings with every default filled in (and the
    fields a cell sets itself left out), so that naming a default or not makes the same cell."""
    from dataclasses import asdict

    from dapt_core.grid.config import CELL_DAPT_FIELDS, CELL_TRAIN_FIELDS
    from dapt_core.learners import LEARNERS
    from dapt_core.objective import DaptConfig
    from dapt_core.train import TrainConfig

    def fields_of(obj, leave_out=()) -> dict:
        return {k: v for k, v in asdict(obj).items() if k not in leave_out}

    settings = {"train": fields_of(TrainConfig(**cfg.train), CELL_TRAIN_FIELDS),
                "dapt": fields_of(DaptConfig(**cfg.dapt), CELL_DAPT_FIELDS),
                "learner": {kind: fields_of(config_cls(**cfg.learner_options.get(kind, {})))
                            for kind, (_, config_cls) in LEARNERS.items()},
                "selection": {}}
    if cfg.setting == "data_efficient":
        from dapt_core.grid.selection import normalised_options

        settings["selection"] = normalised_options(cfg.selection_options)
    return settings


def expand(cfg: GridConfig, out: str | Path) -> list[Cell]:
    """Every cell of the grid, data set by data set, with its folder under ``out``.

    Raises:
        GridConfigError: two data set entries with the same name.
    """
    from dapt_core.grid.methods import get_method

    out = Path(out)
    settings = normalised_settings(cfg)
    named = [dataset_spec(d, cfg.data_root) for d in cfg.datasets]
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise GridConfigError(f"grid config datasets name a data set twice: {names}")
    mask_root = Path(cfg.mask_root) if cfg.mask_root else out / "masks"
    efficient = cfg.setting == "data_efficient"
    choices = [(s, f) for s in cfg.selection_methods for f in cfg.fractions] if efficient else [(None, None)]
    cells = []
    for name, spec in named:
        for method in cfg.methods:
            learner = get_method(method).learner
            dapt = settings["dapt"] if get_method(method).cue != "off" else {}  # a plain learner has no DAPT
            for shots in cfg.shots:
                for selection, fraction in choices:
                    for seed in cfg.seeds:
                        folder = out / cfg.setting / name / method / _variant(shots, selection, fraction) / f"seed{seed}"
                        cells.append(Cell(
                            setting=cfg.setting, dataset=name, data=spec, method=method, shots=shots, seed=seed,
                            folder=str(folder), backbone=cfg.backbone, train=dict(settings["train"]),
                            dapt=dict(dapt), learner_options=dict(settings["learner"][learner]),
                            fraction=None if fraction is None else float(fraction), selection=selection,
                            selection_options=dict(settings["selection"]),
                            mask_dir=str(mask_root / name), weights=cfg.weights, device=cfg.device))
    return cells


def _read_json(path: Path) -> dict | None:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return content if isinstance(content, dict) else None


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def valid_metrics(record: dict, setting: str) -> bool:
    """True when a metrics record holds every number the setting's tables read."""
    metrics = record.get("metrics")
    if not isinstance(metrics, dict):
        return False
    if setting == "base_to_novel":
        parts = [metrics.get("base"), metrics.get("novel")]
        return (all(isinstance(p, dict) and _finite(p.get("accuracy")) for p in parts)
                and _finite(metrics.get("hm")))
    return _finite(metrics.get("accuracy"))


def _differences(stored: dict, wanted: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(stored) | set(wanted)):
        a, b = stored.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} there, {b!r} now")
    return diffs


def stored_identity(record: dict) -> Any:
    """A record's identity as this version writes it: a DAPT cell written before a DaptConfig field existed
    gets the value it was trained with (:data:`dapt_core.constants.DAPT_RECORD_DEFAULTS`), so its finished result still counts."""
    identity = record.get("identity")
    dapt = identity.get("dapt") if isinstance(identity, dict) else None
    if not isinstance(dapt, dict) or not dapt:  # a plain learner's cell records no DAPT settings
        return identity
    return {**identity, "dapt": {**{k: v for k, v in DAPT_RECORD_DEFAULTS.items() if k not in dapt}, **dapt}}


def read_finished(cell: Cell) -> dict | None:
    """The cell's metrics record when it is finished (file present, readable, valid, of this cell); else None."""
    record = _read_json(Path(cell.folder) / METRICS_FILE)
    if record is None or record.get("format") != CELL_FORMAT or stored_identity(record) != cell.identity():
        return None
    record["identity"] = stored_identity(record)
    return record if valid_metrics(record, cell.setting) else None


def stored_identity_conflict(cell: Cell) -> list[str]:
    """What differs between the run already in the cell's folder and this cell; [] when nothing does."""
    for name in (METRICS_FILE, CELL_FILE):
        record = _read_json(Path(cell.folder) / name)
        if record is not None and isinstance(record.get("identity"), dict):
            return _differences(stored_identity(record), cell.identity())
    return []


def plan(cells: list[Cell]) -> tuple[list[Cell], list[Cell]]:
    """Splits the cells into (finished, to run).

    Raises:
        GridConfigError: a cell folder holds a run with other settings (the message lists the first ones and
            what differs); nothing has been run or written.
    """
    conflicts = []
    finished, todo = [], []
    for cell in cells:
        diffs = stored_identity_conflict(cell)
        if diffs:
            conflicts.append(f"{cell.key}: {'; '.join(diffs)}")
        elif read_finished(cell) is not None:
            finished.append(cell)
        else:
            todo.append(cell)
    if conflicts:
        shown = "\n  ".join(conflicts[:MAX_LISTED_MISMATCHES])
        more = f"\n  ... and {len(conflicts) - MAX_LISTED_MISMATCHES} more" if len(conflicts) > MAX_LISTED_MISMATCHES else ""
        raise GridConfigError(f"{len(conflicts)} cell folder(s) hold runs with other settings; choose another "
                              f"--out or remove them:\n  {shown}{more}")
    return finished, todo
