"""A grid's configuration: data sets x shots x seeds x methods (x selection fractions and methods), from YAML.

A config is a YAML file, or the name of a preset shipped in ``dapt_core/grid/presets/`` (the paper's three
settings with the official values of METHOD.md). A file may start from a preset (``preset: few_shot``) and
override any key; mappings (``train``, ``dapt``, ``resources``, ``masks``, ``learner_options``) are merged
key by key. Every value is checked when the config is loaded, before any model or data set is read: a bad
value raises :class:`GridConfigError` naming the key.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from dapt_core.grid.errors import GridConfigError
from dapt_core.grid.methods import METHODS, get_method

PRESET_DIR = Path(__file__).resolve().parent / "presets"
SETTINGS = ("few_shot", "base_to_novel", "data_efficient")
AUTO = "auto"
# mappings merged key by key when a file overrides its preset
NESTED_KEYS = ("train", "dapt", "resources", "masks", "learner_options", "selection_options")
# TrainConfig / DaptConfig fields a grid sets itself, per cell: a config may not name them
CELL_TRAIN_FIELDS = ("seed", "shots")
CELL_DAPT_FIELDS = ("cue",)
__all__ = ["GridConfig", "GridConfigError", "MaskSettings", "Resources", "list_presets", "load_config", "parse_config"]


@dataclass
class Resources:
    num_cpus: float = 1.0  # CPU cores one trial holds (and the torch threads it uses)
    num_gpus: float | str = AUTO  # GPUs per trial (0.5: two trials share one); auto: 1 where there is a GPU, else 0


@dataclass
class MaskSettings:
    segmenter: str = "sam"  # a name of dapt_core.segment.list_segmenters() (sam, grabcut, cam)
    cam_method: str = "gradcam"  # the cue the segmenter is prompted from (zero-shot CLIP's CAM of the true class)
    score: bool = True  # SAM: choose among its candidates by CLIP's score of the true class
    sam_model: str = "vit_b"  # SAM variant
    sam_checkpoint: str | None = None  # explicit SAM weight file


@dataclass
class GridConfig:
    setting: str  # few_shot, base_to_novel (train on the base half, test base and novel) or data_efficient
    datasets: list[str]  # CoOp keys (read under data_root) or data specs (coop:NAME:ROOT, imagefolder:PATH)
    methods: list[str]  # names of dapt_core.grid.methods.METHODS
    shots: list[int]  # images per class of the training draw (0 = every image)
    seeds: list[int]  # seeds of the draw, the prompt initialisation and the training
    data_root: str | None = None  # CoOp's DATA folder, holding one folder per data set
    fractions: list[float] = field(default_factory=lambda: [1.0])  # data_efficient: share of the draw kept
    selection_methods: list[str] = field(default_factory=lambda: ["uniform"])  # data_efficient: how it is chosen
    selection_options: dict = field(default_factory=dict)  # data_efficient: other SelectionConfig fields
    mask_root: str | None = None  # DAPT-S masks, one tree per data set (MASK_ROOT/<data set>/); None: OUT/masks
    backbone: str = "ViT-B-16"  # backbone registry key
    weights: str | None = None  # explicit backbone weight file
    device: str | None = None  # cpu, cuda, ...; None: the GPU a trial is given, else the CPU
    train: dict = field(default_factory=dict)  # TrainConfig fields (epochs, batch_size, lr, selection, ...)
    dapt: dict = field(default_factory=dict)  # DaptConfig fields other than the cue (schedule, weights, ...)
    learner_options: dict = field(default_factory=dict)  # per learner: fields of its config (n_ctx, depth, ...)
    resources: Resources = field(default_factory=Resources)
    masks: MaskSettings = field(default_factory=MaskSettings)
    max_retries: int = 2  # a failed or killed trial runs again this many times, then is reported
    out: str | None = None  # output folder (the command's --out wins)

    @property
    def needs_masks(self) -> bool:
        """True when a method uses the fine (mask) cue."""
        return any(get_method(m).cue == "mask" for m in self.methods)


def list_presets() -> list[str]:
    """Names of the shipped presets (``few_shot``, ``base_to_novel``, ``data_efficient``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict:
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise GridConfigError(f"cannot read grid config {path}: {err}") from err
    except UnicodeDecodeError as err:
        raise GridConfigError(f"cannot read grid config {path}: it is not UTF-8 text (byte {err.start})") from err
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise GridConfigError(f"grid config {path} must be a mapping of keys, got {type(content).__name__}")
    return content


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if key in NESTED_KEYS and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _raw_config(source: str | Path) -> dict:
    path = Path(source)
    if not path.is_file():
        if str(source) not in list_presets():
            raise GridConfigError(f"grid config {source} is neither a file nor a preset; presets: "
                                  f"{', '.join(list_presets())}")
        path = PRESET_DIR / f"{source}.yaml"
    raw = _read_yaml(path)
    preset = raw.pop("preset", None)
    if preset is not None:
        if preset not in list_presets():
            raise GridConfigError(f"{path}: unknown preset {preset!r}; presets: {', '.join(list_presets())}")
        raw = _merge(_read_yaml(PRESET_DIR / f"{preset}.yaml"), raw)
    return raw


def load_config(source: str | Path, overrides: dict[str, Any] | None = None) -> GridConfig:
    """Reads and checks a grid config.

    Args:
        source: a YAML file, or a preset name (see :func:`list_presets`).
        overrides: keys that win over the file's (the command line's ``--data-root`` and so on); None values
            are ignored.

    Raises:
        GridConfigError: an unreadable file, an unknown key, or a bad value (the message names it).
    """
    raw = _merge(_raw_config(source), {k: v for k, v in (overrides or {}).items() if v is not None})
    return parse_config(raw)


def _sub(cls: type, value: object, key: str):
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise GridConfigError(f"grid config {key} must be a mapping, got {value!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise GridConfigError(f"grid config {key} has no key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**value)


def parse_config(raw: dict) -> GridConfig:
    """A checked :class:`GridConfig` from a plain mapping (what the YAML file holds, presets merged)."""
    known = {f.name for f in fields(GridConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise GridConfigError(f"unknown grid config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    missing = [k for k in ("setting", "datasets", "methods", "shots", "seeds") if k not in raw]
    if missing:
        raise GridConfigError(f"grid config lacks {', '.join(missing)}")
    values = dict(raw)
    values["resources"] = _sub(Resources, values.get("resources", {}), "resources")
    values["masks"] = _sub(MaskSettings, values.get("masks", {}), "masks")
    cfg = GridConfig(**values)
    check_config(cfg)
    return cfg


def _list(cfg: GridConfig, key: str, check, what: str) -> None:
    values = getattr(cfg, key)
    if not isinstance(values, list) or not values:
        raise GridConfigError(f"grid config {key} must be a non-empty list, got {values!r}")
    for value in values:
        if not check(value):
            raise GridConfigError(f"grid config {key}: {value!r} is not {what}")
    if len(set(map(str, values))) != len(values):
        raise GridConfigError(f"grid config {key} lists a value twice: {values!r}")


def _is_int(value: object, low: int | None = None) -> bool:
    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and (low is None or value >= low))


def _is_number(value: object, low: float = 0.0) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            and value >= low)


def check_config(cfg: GridConfig) -> None:
    """Checks every key of ``cfg`` (the train and DAPT settings through their own config classes).

    Raises:
        GridConfigError: naming the first bad key.
    """
    if cfg.setting not in SETTINGS:
        raise GridConfigError(f"grid config setting {cfg.setting!r} is not one of {', '.join(SETTINGS)}")
    _list(cfg, "methods", lambda m: m in METHODS, f"a method ({', '.join(METHODS)})")
    _list(cfg, "datasets", lambda d: isinstance(d, str) and d.strip() != "", "a data set name or spec")
    _list(cfg, "shots", lambda s: _is_int(s, 0), "an integer >= 0 (0 = every image)")
    _list(cfg, "seeds", _is_int, "an integer")
    _list(cfg, "fractions", lambda f: _is_number(f) and 0 < f <= 1, "a fraction in (0, 1]")
    _list(cfg, "selection_methods", lambda s: isinstance(s, str) and s != "", "a selection method name")
    if cfg.setting != "data_efficient" and (cfg.fractions != [1.0] or cfg.selection_methods != ["uniform"]
                                            or cfg.selection_options):
        raise GridConfigError(f"fractions, selection_methods and selection_options belong to the data_efficient "
                              f"setting, not {cfg.setting}")
    if not isinstance(cfg.selection_options, dict):
        raise GridConfigError(f"grid config selection_options must be a mapping, got {cfg.selection_options!r}")
    if not _is_int(cfg.max_retries, 0):
        raise GridConfigError(f"grid config max_retries must be an integer >= 0, got {cfg.max_retries!r}")
    if not (_is_number(cfg.resources.num_cpus) and cfg.resources.num_cpus > 0):
        raise GridConfigError(f"resources.num_cpus must be a number > 0, got {cfg.resources.num_cpus!r}")
    if cfg.resources.num_gpus != AUTO and not _is_number(cfg.resources.num_gpus):
        raise GridConfigError(f"resources.num_gpus must be a number >= 0 or {AUTO!r}, got {cfg.resources.num_gpus!r}")
    for key in ("data_root", "mask_root", "weights", "device", "out"):
        value = getattr(cfg, key)
        if value is not None and not isinstance(value, str):
            raise GridConfigError(f"grid config {key} must be a string, got {value!r}")
    if cfg.data_root is None and any(":" not in d for d in cfg.datasets):
        raise GridConfigError("grid config names CoOp data sets by key but gives no data_root (CoOp's DATA "
                              "folder; --data-root on the command line)")
    _check_library_settings(cfg)


def _check_library_settings(cfg: GridConfig) -> None:
    """The train, DAPT and learner settings, checked by the library's own config classes."""
    from dapt_core.learners import LEARNERS
    from dapt_core.objective import DaptConfig
    from dapt_core.segment import list_segmenters
    from dapt_core.train import TrainConfig

    for key, value, reserved in (("train", cfg.train, CELL_TRAIN_FIELDS), ("dapt", cfg.dapt, CELL_DAPT_FIELDS)):
        if not isinstance(value, dict):
            raise GridConfigError(f"grid config {key} must be a mapping, got {value!r}")
        taken = sorted(set(value) & set(reserved))
        if taken:
            raise GridConfigError(f"grid config {key} may not set {', '.join(taken)}: the grid sets it per cell")
    for key, cls, value in (("train", TrainConfig, cfg.train), ("dapt", DaptConfig, cfg.dapt)):
        try:
            cls(**value)
        except (TypeError, ValueError) as err:  # TypeError: a field the class does not have
            raise GridConfigError(f"grid config {key}: {err}") from err
    if not isinstance(cfg.learner_options, dict):
        raise GridConfigError(f"grid config learner_options must be a mapping, got {cfg.learner_options!r}")
    for kind, options in cfg.learner_options.items():
        if kind not in LEARNERS or not isinstance(options, dict):
            raise GridConfigError(f"grid config learner_options: {kind!r} must be a learner "
                                  f"({', '.join(LEARNERS)}) with a mapping of options")
        known = {f.name for f in fields(LEARNERS[kind][1])}
        unknown = sorted(set(options) - known)
        if unknown:
            raise GridConfigError(f"grid config learner_options.{kind} has no option(s) {', '.join(unknown)}; "
                                  f"options: {', '.join(sorted(known))}")
    if cfg.needs_masks and cfg.masks.segmenter not in list_segmenters():
        raise GridConfigError(f"grid config masks.segmenter {cfg.masks.segmenter!r} is not one of "
                              f"{', '.join(list_segmenters())}")
    if cfg.setting == "data_efficient":
        from dapt_core.grid.selection import check_selection

        check_selection(cfg.selection_methods, cfg.fractions, cfg.selection_options)
