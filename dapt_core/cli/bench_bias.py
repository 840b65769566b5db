"""``python -m dapt_core bench bias`` and ``bench gates``: a backbone's background bias and issue 14's gates.

- ``bench bias``: the ImageNet-9-style suite (:mod:`dapt_core.experiments.bias_suite`): six variants of fresh
  scenes, zero-shot accuracy on each, BG-Gap; writes ``<name>.json/.md/.png``; the last stdout line is the
  result as one JSON object.
- ``bench gates``: every gate of :mod:`dapt_core.experiments.gate_thresholds` measured and judged
  (:mod:`dapt_core.experiments.bias_gates`); writes ``<name>.json/.md`` and the suite's report as ``bench bias``
  would; prints a table of verdicts, then one JSON line.
- ``bench headroom``: zero-shot, CoOp and linear-probe ceilings on the gates' downstream task
  (:mod:`dapt_core.experiments.headroom_probe`); writes ``<name>.json/.md``, then one JSON line.

The parser is built without torch; the thresholds module is plain dataclasses.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex

from dapt_core import paths
from dapt_core.cli.common import add_backbone_args, print_json
from dapt_core.experiments.gate_thresholds import (
    DEFAULT_REGISTRATION,
    FIRST_REGISTRATION,
    REGISTRATIONS,
    SETTINGS,
    thresholds_of,
)

log = logging.getLogger(__name__)

WORLD_CHOICES = ("auto", "synth", "web")  # auto: web for a synth-web backbone, else synth
DEFAULT_THREADS = 1  # small models; on a shared CPU more threads mostly add contention
# flags whose default a recorded command line leaves out
UNSPELT_DEFAULTS = {"registration": DEFAULT_REGISTRATION, "learner": "coop"}


def _common(p: argparse.ArgumentParser) -> None:
    add_backbone_args(p, "synth-mini")
    p.add_argument("--world", choices=WORLD_CHOICES, default="auto",
                   help="scene world: synth (dapt_core.world), web (dapt_core.world.web), or auto (web for a "
                        "synth-web backbone, else synth); default: %(default)s")
    p.add_argument("--seed", type=int, default=1, help="seeds the scenes, the task and the training; default: 1")
    p.add_argument("--per-class", type=int, default=SETTINGS.suite_per_class,
                   help="bias-suite base scenes per class; default: %(default)s")
    p.add_argument("--n-classes", type=int, default=None, help="use only the first N classes (quick checks)")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch CPU threads; default: %(default)s")
    p.add_argument("--out", default=str(paths.PROJECT_DIR / "docs" / "results"),
                   help="results folder; default: docs/results")
    p.add_argument("--name", default=None, help="file stem; default: bias_suite[_gates]_<backbone>_seed<S>")


def _task_args(p: argparse.ArgumentParser) -> None:
    """The downstream task's size and CoOp's epochs (``bench gates`` and ``bench headroom``)."""
    p.add_argument("--shots", type=int, default=SETTINGS.shots, help="training scenes per class; default: %(default)s")
    p.add_argument("--n-test", type=int, default=SETTINGS.n_test,
                   help="test scenes per class and split; default: %(default)s")
    p.add_argument("--epochs", type=int, default=SETTINGS.epochs, help="training epochs; default: %(default)s")


def _check_positive(args: argparse.Namespace, flags: tuple[str, ...]) -> None:
    for flag in flags:
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")


def add_bias_parser(bsub: argparse._SubParsersAction) -> None:
    """Adds ``bias`` and ``gates`` to the ``bench`` sub-commands."""
    p = bsub.add_parser("bias", help="ImageNet-9-style background-bias suite of a backbone",
                        description="Original, Only-FG, Only-BG, No-FG, Mixed-Same and Mixed-Rand variants of fresh "
                                    "scenes from exact masks; zero-shot accuracy on each and BG-Gap = Mixed-Same - "
                                    "Mixed-Rand. Writes <name>.json/.md/.png; the last stdout line is one JSON "
                                    "object.")
    _common(p)
    p.add_argument("--prompts", default=None, metavar="CKPT",
                   help="measure this prompt set (.safetensors, over the world's classes) instead of zero-shot CLIP; "
                        "in the synth world give its task seed as --seed, so that home = its training pairing")
    p.set_defaults(func=run_bench_bias)

    p = bsub.add_parser("gates", help="issue 14's gates: bias, headroom and attention separation, pass/fail",
                        description="Measure BG-Gap, Only-BG over chance, the downstream task's headroom (zero-shot "
                                    "and CoOp) and whether the attention metric separates a balanced and a "
                                    "background-label control prompt set; judge each against the thresholds "
                                    "of dapt_core/experiments/gate_thresholds.py. Writes <name>.json/.md; prints "
                                    "the verdicts, then one JSON line.")
    _common(p)
    _task_args(p)
    p.add_argument("--registration", choices=tuple(REGISTRATIONS), default=DEFAULT_REGISTRATION,
                   help="which registered settings (dapt_core/experiments/gate_thresholds.py REGISTRATIONS): v1, the "
                        "first; v2, the attention gate over three control pairs with the metric chosen on development "
                        "seeds; v3, v2 with the rehomed downstream task and class-specific CoOp; default: "
                        "%(default)s, so that older command lines rerun as they ran")
    p.set_defaults(func=run_bench_gates)

    p = bsub.add_parser("headroom", help="zero-shot, CoOp and linear-probe ceilings on a world's downstream task",
                        description="How much room the downstream task of the gates leaves a text-side prompt learner: "
                                    "zero-shot, CoOp (trained as the gates train it, with its loss per epoch), a "
                                    "linear probe on the task's shots and one on many balanced scenes, on every "
                                    "test split. Writes <name>.json/.md; the last stdout line is one JSON object.")
    _common(p)
    _task_args(p)
    p.add_argument("--probe-per-class", type=int, default=200,
                   help="balanced scenes per class for the ceiling probe; default: %(default)s")
    p.add_argument("--learner", choices=("coop", "maple"), default="coop",
                   help="the prompt learner trained on the task (zero-shot stays CoOp untrained); default: "
                        "%(default)s")
    p.add_argument("--registration", choices=tuple(REGISTRATIONS), default=DEFAULT_REGISTRATION,
                   help="whose downstream task and CoOp options (gate_thresholds.REGISTRATIONS); default: %(default)s")
    p.set_defaults(func=run_bench_headroom)

    p = bsub.add_parser("gates-card", help="copy a gates verdict into a model card",
                        description="Replace the lines between the card's gates-verdict markers with the verdict, "
                                    "the bias suite and the headroom numbers of one `bench gates` result.")
    p.add_argument("--result", required=True, help="the JSON `bench gates` wrote")
    p.add_argument("--card", default=str(paths.CHECKPOINT_DIR / "synth-web.md"),
                   help="model card; default: checkpoints/synth-web.md")
    p.set_defaults(func=run_gates_card)


def _world(args: argparse.Namespace) -> str:
    if args.world != "auto":
        return args.world
    return "web" if args.backbone.startswith("synth-web") else "synth"


def _command(args: argparse.Namespace, sub: str, extra: tuple[str, ...] = ()) -> str:
    """The command line that reruns this run (every setting that changes a number, spelled out)."""
    parts = ["python -m dapt_core bench", sub, "--backbone", args.backbone, "--world", _world(args),
             "--seed", str(args.seed), "--per-class", str(args.per_class)]
    for flag in extra:
        if UNSPELT_DEFAULTS.get(flag, object()) == getattr(args, flag):
            continue  # command lines recorded before the flag existed stay the same string
        parts += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.n_classes is not None:
        parts += ["--n-classes", str(args.n_classes)]
    if args.weights:
        parts += ["--weights", args.weights]
    if getattr(args, "prompts", None):
        parts += ["--prompts", args.prompts]
    return " ".join(shlex.quote(p) if i > 1 else p for i, p in enumerate(parts))


def _setup(args: argparse.Namespace):
    import torch

    from dapt_core.cli.common import load_backbone

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.per_class < 1:
        raise ValueError(f"--per-class must be >= 1, got {args.per_class}")
    torch.set_num_threads(args.threads)
    return load_backbone(args)


def _suite(args: argparse.Namespace, backbone) -> tuple[dict, str]:
    """Runs the bias suite (zero-shot, or ``--prompts``) and writes its report; returns the result and file stem."""
    from pathlib import Path

    from dapt_core.checkpoint import load_prompt_set
    from dapt_core.experiments.bias_report import write_suite
    from dapt_core.experiments.bias_suite import run_suite, suite_scenes
    from dapt_core.experiments.bias_worlds import build

    world = build(_world(args), args.seed, args.n_classes)
    prompts = getattr(args, "prompts", None)
    learner = load_prompt_set(prompts, backbone) if prompts else None
    scenes = suite_scenes(world, args.per_class, args.seed, backbone.image_size)
    result = run_suite(backbone, world, args.per_class, args.seed, scenes=scenes, learner=learner)
    if prompts:
        result["prompt_set"] = Path(prompts).name
    stem = f"bias_suite_{backbone.name}{'_' + Path(prompts).stem if prompts else ''}_seed{args.seed}"
    if args.name:
        stem = args.name if args.bench_command == "bias" else f"{args.name}_suite"
    written = write_suite(result, args.out, stem, _command(args, "bias"), scenes, backbone.mean, backbone.std)
    log.info("wrote %s", ", ".join(written.values()))
    return result, stem


def run_bench_bias(args: argparse.Namespace) -> int:
    print_json(_suite(args, _setup(args))[0])
    return 0


def run_bench_gates(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from dapt_core.experiments.bias_gates import run_gates
    from dapt_core.experiments.bias_report import write_gates

    _check_positive(args, ("shots", "n_test", "epochs"))
    settings = replace(REGISTRATIONS[args.registration], suite_per_class=args.per_class, shots=args.shots,
                       n_test=args.n_test, epochs=args.epochs)
    world = _world(args)
    backbone = _setup(args)
    suite, suite_stem = _suite(args, backbone)  # the suite's own report as `bench bias` writes it, from the same scenes
    result = run_gates(backbone, world, args.seed, settings=settings, thresholds=thresholds_of(args.registration),
                       n_classes=args.n_classes, suite=suite)
    version = "" if args.registration == FIRST_REGISTRATION else f"_{args.registration}"  # v1 keeps its first names
    stem = args.name or f"bias_suite_gates{version}_{backbone.name}_seed{args.seed}"
    command = _command(args, "gates", ("shots", "n_test", "epochs", "registration"))
    written = write_gates(result, args.out, stem, command, suite_stem)
    log.info("wrote %s", ", ".join(written.values()))
    verdict = {True: "pass", False: "FAIL", None: "not measured"}
    for row in result["gates"]:
        print(f"{row['gate']:<22} {verdict[row['passed']]:<12} measured {row['measured']}  ({row['threshold']})")
    print_json({"backbone": result["backbone"], "pretrained": result["pretrained"], "world": world,
                "seed": args.seed, "registered": result["registered"], "registration": result["registration"],
                "passed": result["passed"],
                "gates": {row["gate"]: {"measured": row["measured"], "passed": row["passed"]}
                          for row in result["gates"]}})
    return 0


def run_bench_headroom(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from dapt_core.experiments.headroom_probe import probe_markdown, run_probe
    from dapt_core.fileio import write_bytes_atomic

    _check_positive(args, ("shots", "n_test", "epochs", "probe_per_class"))
    registered = REGISTRATIONS[args.registration]
    if args.learner != "coop":  # class-specific context is CoOp's option
        registered = replace(registered, class_specific=False)
    backbone = _setup(args)
    result = run_probe(backbone, _world(args), args.seed, shots=args.shots, n_test=args.n_test,
                       probe_per_class=args.probe_per_class,
                       settings=replace(registered, epochs=args.epochs, learner=args.learner),
                       n_classes=args.n_classes)
    command = _command(args, "headroom", ("shots", "n_test", "epochs", "probe_per_class", "learner", "registration"))
    learner = "" if args.learner == "coop" else f"{args.learner}_"
    version = "" if args.registration == FIRST_REGISTRATION else f"{args.registration}_"
    stem = Path(args.out) / (args.name or f"headroom_probe_{version}{learner}{backbone.name}_seed{args.seed}")
    record = json.dumps({**result, "command": command}, indent=1) + "\n"
    # a stem may hold a dot (--name p0.5_seed100): the suffix is added, never swapped for the stem's tail
    write_bytes_atomic(stem.parent / f"{stem.name}.json", record.encode())
    write_bytes_atomic(stem.parent / f"{stem.name}.md", probe_markdown(result, command).encode())
    log.info("wrote %s.json and .md", stem)
    print_json(result)
    return 0


def run_gates_card(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from dapt_core.experiments.background_shift_report import replace_marked
    from dapt_core.experiments.bias_report import card_block, card_markers
    from dapt_core.fileio import write_bytes_atomic

    result_path, card = Path(args.result), Path(args.card)
    try:
        result = json.loads(result_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{result_path}: not a result written by `bench gates` ({err})") from err
    keys = ("backbone", "seed", "gates", "suite", "headroom", "passed")
    missing = [k for k in keys if k not in result] if isinstance(result, dict) else list(keys)
    if missing:
        raise ValueError(f"{result_path}: not a result written by `bench gates` (no {', '.join(missing)})")
    figure = result_path.parent / f"bias_suite_{result['backbone']}_seed{result['seed']}.png"
    relative = {p: Path(os.path.relpath(p.resolve(), card.resolve().parent)).as_posix() for p in (result_path, figure)}
    block = card_block(result, relative[result_path], relative[figure] if figure.exists() else None)
    text = replace_marked(card.read_text(encoding="utf-8"), block, card_markers(result))
    write_bytes_atomic(card, text.encode("utf-8"))
    print_json({"card": str(card), "result": str(result_path), "passed": result["passed"]})
    return 0
