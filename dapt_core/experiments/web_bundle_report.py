"""The web bundle's example scenes on disk: native PNG, exact mask and a 256 px enlarged copy per scene, an
``examples.json`` manifest and a README.md, with every scene's own numbers beside the benchmark's aggregate.

The manifest is an object (the older example folders hold a bare list of entries, which
:class:`dapt_core.app_support.startup.Examples` reads as well): the task, the picking rule, the prompt sets, the
benchmark's aggregate (or None) and ``examples``, one entry per picked scene with the keys every example folder
uses (``file``, ``mask``, ``split``, ``object``, ``background``), a ``caption`` for its thumbnail, its
``quantile``, ``scene_index`` and ``difference``, its numbers per method, and ``note``: the markdown the app shows
when the scene is picked, the same text as the README's section of that scene. The enlarged copy is under
``enlarged``, not ``view``: the app offers the native scene, because the maps it draws are then the ones measured
here (the model resizes its input bicubically, and the 256 px copy, taken back to 64 px, gives other gradient maps:
in a smoke run one CoOp share went from 0.61 on the native scene to 0.01). Deterministic: the same run writes the
same bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from dapt_core.backbones import get_backbone_spec
from dapt_core.experiments.background_shift import BenchConfig
from dapt_core.experiments.background_shift_prompts import prompt_set_stem
from dapt_core.experiments.bias_worlds import DownstreamTask
from dapt_core.experiments.web_bundle import PICK_RULE, SPLIT, scene_numbers
from dapt_core.fileio import write_bytes_atomic
from dapt_core.world.export import write_example_images
from dapt_core.world.web import HOME_BACKGROUNDS

MANIFEST_FORMAT = "dapt-examples"
MANIFEST_VERSION = 1
MANIFEST_NAME = "examples.json"
VIEW_SIZE = 256  # side of the nearest-neighbour viewing copy; the native scenes are 64 px
METHOD_TITLES = {"coop": "CoOp", "coop+dapt-mask": "CoOp + DAPT-S", "coop+dapt-gradcam": "CoOp + DAPT-G",
                 "maple": "MaPLe", "maple+dapt-mask": "MaPLe + DAPT-S", "maple+dapt-gradcam": "MaPLe + DAPT-G"}


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def quantile_words(q: float) -> str:
    """``0.5`` -> "median", ``0.9`` -> "90th percentile", ``0.0`` / ``1.0`` -> "lowest" / "highest"."""
    if q == 0.5:
        return "median"
    if q in (0.0, 1.0):
        return "lowest" if q == 0.0 else "highest"
    percent = q * 100
    return f"{_ordinal(round(percent))} percentile" if percent == round(percent) else f"{percent:g}th percentile"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _interval(stats: dict | None, decimals: int, signed: bool = False) -> str:
    """``mean [low, high]``; ``mean`` alone for one seed; "not measured" for None."""
    if stats is None or stats["mean"] is None or math.isnan(stats["mean"]):
        return "not measured"
    fmt = f"{'+' if signed else ''}.{decimals}f"
    if stats["ci95"] is None:
        return f"{stats['mean']:{fmt}}"
    low, high = stats["ci95"]
    return f"{stats['mean']:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def _compared(difference: float) -> str:
    if round(difference, 3) == 0.0:  # as the note prints it
        return "about as much of its map on the object as"
    return f"{'more' if difference > 0 else 'less'} of its map on the object than"


def example_note(manifest: dict, entry: dict) -> str:
    """The markdown shown beside one example: why it was picked, then per method its prediction and energy share
    on this scene beside the benchmark's mean and 95% interval over seeds, and the DAPT-minus-base difference."""
    rule, task, benchmark, cams = manifest["rule"], manifest["task"], manifest["benchmark"], manifest["cam_methods"]
    base, dapt = (METHOD_TITLES.get(m, m) for m in (rule["base"], rule["dapt"]))
    lines = [
        f"**{entry['object']} on {entry['background']}**, picked at the **{quantile_words(entry['quantile'])}** of "
        f"{dapt} minus {base} in {rule['cam']} energy share on the object over the {task['n_scenes']} conflicting "
        f"scenes of the rehomed web task (seed {task['seed']}, {task['shots']} shots): **{entry['difference']:+.3f}** "
        f"here ({dapt} puts {_compared(entry['difference'])} {base}). In this data set the {entry['object']} is "
        f"usually on {' or '.join(entry['downstream_homes'])}; on the web, on {' or '.join(entry['web_homes'])}.",
        "",
    ]
    maps = " / ".join(cams)
    header = ["prompt set", "predicts", f"share here ({maps})"]
    header += [f"share, benchmark ({maps})", "conflicting acc %, benchmark"] if benchmark else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, own in entry["methods"].items():
        row = [f"{METHOD_TITLES.get(method, method)} `{own['prompt_set']}`",
               f"{own['prediction']} {'✓' if own['correct'] else '✗'}",
               " / ".join(_share(own["energy_share"][cam]) for cam in cams)]
        if benchmark:
            agg = benchmark["methods"].get(method)
            row += [" / ".join(_interval(agg["energy_share"][cam], 3) for cam in cams) if agg else "-",
                    _interval(agg["conflicting_acc"], 1) if agg else "-"]
        lines.append("| " + " | ".join(row) + " |")
    row = [f"{dapt} − {base}", "", " / ".join(_signed(entry["methods"], rule["dapt"], rule["base"], cam)
                                              for cam in cams)]
    if benchmark:
        row += [" / ".join(_interval(benchmark["difference"][cam], 3, signed=True) for cam in cams), ""]
    lines += ["| " + " | ".join(row) + " |", ""]
    lines.append(f"*here*: on this scene, the share of the true class's map inside its exact mask (the object covers "
                 f"{entry['object_area']:.3f} of the {task['image_size']} px scene: a map spread evenly puts that "
                 "share on it).")
    if benchmark:
        lines[-1] += (f" *benchmark*: `{benchmark['source']}`, the mean of the same share over all conflicting "
                      f"scenes, and of the accuracy on them, with its 95% interval over seeds "
                      f"{', '.join(map(str, benchmark['seeds']))}.")
    else:
        lines[-1] += " No benchmark result was given to the command that wrote this example."
    lines[-1] += (f" The app draws these maps with `{rule['cam']}` (under Options) and `{entry['object']}` typed in "
                  "*Explain class*.")
    return "\n".join(lines)


def _signed(methods: dict, dapt: str, base: str, cam: str) -> str:
    a, b = methods[dapt]["energy_share"][cam], methods[base]["energy_share"][cam]
    return "n/a" if a is None or b is None else f"{a - b:+.3f}"


def _stem(n: int, q: float, obj: str, background: str) -> str:
    return f"{n:02d}_q{q * 100:g}_{obj}_on_{background}"


def build_manifest(cfg: BenchConfig, task: DownstreamTask, records: list[dict], picks: list[dict],
                   pair: Sequence[str], benchmark: dict | None, agreement: dict | None,
                   command: str | None) -> dict:
    """The manifest of the picked scenes (see the module docstring); ``picks`` from
    :func:`~dapt_core.experiments.web_bundle.pick_examples`, ``benchmark`` from
    :func:`~dapt_core.experiments.web_bundle.benchmark_aggregate`, ``agreement`` from
    :func:`~dapt_core.experiments.web_bundle.per_scene_agreement`."""
    scenes = task.tests[SPLIT]
    quantiles = [p["quantile"] for p in picks]
    manifest = {
        "format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION,
        "backbone": cfg.backbone, "pretrained": get_backbone_spec(cfg.backbone).pretrained,
        "command": command,
        "task": {"world": cfg.world, "variant": cfg.task_variant, "seed": cfg.seeds[0], "shots": cfg.shots[0],
                 "n_test_per_class": cfg.n_test, "split": SPLIT, "n_scenes": len(scenes.labels),
                 "image_size": int(scenes.images.shape[1]), "description": task.description},
        "rule": {"base": pair[0], "dapt": pair[1], "cam": cfg.cam_methods[0], "quantiles": quantiles,
                 "text": PICK_RULE.format(cam=cfg.cam_methods[0], quantiles=", ".join(f"{q:g}" for q in quantiles))},
        "cam_methods": list(cfg.cam_methods),
        "prompt_sets": {m: prompt_set_stem(cfg, m) for m in cfg.methods},
        "benchmark": benchmark,
        "agreement_with_benchmark": agreement,
    }
    entries = []
    for n, pick in enumerate(picks):
        index = pick["index"]
        obj, background = task.classnames[int(scenes.labels[index])], scenes.backgrounds[index]
        stem = _stem(n, pick["quantile"], obj, background)
        caption = f"{quantile_words(pick['quantile'])}, DAPT {pick['difference']:+.2f}: {obj} on {background}"
        entry = {"file": f"{stem}.png", "mask": f"{stem}_mask.png", "enlarged": f"{stem}_{VIEW_SIZE}.png",
                 "split": "conflicting", "object": obj, "background": background, "caption": caption,
                 "quantile": pick["quantile"], "scene_index": index, "difference": round(pick["difference"], 6),
                 "object_area": round(float(scenes.masks[index].mean()), 6),
                 "downstream_homes": list(task.homes[obj]), "web_homes": list(HOME_BACKGROUNDS[obj]),
                 "methods": scene_numbers(records, cfg, task.classnames, index)}
        entry["note"] = example_note(manifest, entry)
        entries.append(entry)
    manifest["examples"] = entries
    return manifest


def write_examples(root: str | Path, manifest: dict, task: DownstreamTask) -> list[Path]:
    """Writes each picked scene (native PNG, ``_mask.png`` 0/255, ``_256.png`` nearest-neighbour copy), the
    manifest and the README under ``root``, and removes the scenes of an earlier manifest there that this one does
    not name (no other file is touched); returns the paths written."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale(root, manifest)
    scenes = task.tests[SPLIT]
    written = []
    for entry in manifest["examples"]:
        index = entry["scene_index"]
        written += write_example_images(root, (entry["file"], entry["mask"], entry["enlarged"]), scenes.images[index],
                                        scenes.masks[index], VIEW_SIZE)
    text = json.dumps(manifest, indent=1, ensure_ascii=False) + "\n"
    written.append(write_bytes_atomic(root / MANIFEST_NAME, text.encode("utf-8")))
    written.append(write_bytes_atomic(root / "README.md", readme(manifest).encode("utf-8")))
    return written


SCENE_FILES = ("file", "mask", "enlarged")  # the keys of an entry that name its files


def _remove_stale(root: Path, manifest: dict) -> None:
    """Removes the scene files an earlier web-bundle manifest in ``root`` named and ``manifest`` does not."""
    try:
        earlier = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(earlier, dict) or earlier.get("format") != MANIFEST_FORMAT:
        return
    keep = {e[k] for e in manifest["examples"] for k in SCENE_FILES}
    for entry in earlier.get("examples", []):
        for key in SCENE_FILES:
            name = entry.get(key)
            if isinstance(name, str) and name not in keep and Path(name).name == name:
                (root / name).unlink(missing_ok=True)


def readme(manifest: dict) -> str:
    """The folder's README: what the scenes are, the rule that picked them, each scene's note."""
    task, rule = manifest["task"], manifest["rule"]
    command = f"`{manifest['command']}`" if manifest["command"] else "`python -m dapt_core bench web-bundle`"
    lines = [
        "# Example scenes of the rehomed web task (`synth-web`)",
        "",
        f"Written by {command} "
        "(`dapt_core.experiments.web_bundle`); the same command writes the same bytes.",
        "",
        f"The app offers these scenes when it serves the `{manifest['backbone']}` backbone. They are test scenes of "
        f"the task the bundled `web-rehomed-*` prompt sets were trained on: {task['description']}. All come from its "
        f"conflicting split: each object on a background that is its home neither in this data set nor on the web.",
        "",
        f"**How they were picked**: {rule['text']}. The differences are the bundle's own run (seed {task['seed']}); "
        "the benchmark's columns are its aggregate over its seeds.",
        "",
        "Each `NN_q<percentile>_*.png` is the native scene (the picture the app offers: its maps are the ones "
        f"measured here), `*_mask.png` its exact object mask (255 = object) and `*_{VIEW_SIZE}.png` a "
        f"nearest-neighbour upscale for viewing only; `{MANIFEST_NAME}` holds every number below.",
        "",
    ]
    agreement = manifest.get("agreement_with_benchmark")
    if agreement:
        worst = max(v for per_cam in agreement.values() for v in per_cam.values())
        lines += [f"The benchmark ran this task too: the bundle's per-scene shares differ from its by at most "
                  f"{worst:.6f}.", ""]
    for entry in manifest["examples"]:
        lines += [f"## `{entry['file']}`", "", f"![{entry['caption']}]({entry['enlarged']})", "", entry["note"], ""]
    return "\n".join(lines)
