"""``python -m dapt_core bench ...``: the background-shift benchmark on the synthetic worlds and what it bundles.

- ``bench synth``: train and evaluate the seven methods on the synth world's spurious task or (``--world web``)
  the web world's task; writes the table, figure, raw JSON and per-scene values, optionally one task's prompt
  sets; the last stdout line is one JSON object keyed by method.
- ``bench synth-prompts``: train the prompt sets bundled in ``checkpoints/prompts``.
- ``bench synth-examples``: write the example images bundled in ``assets/examples``.
- ``bench synth-readme``: copy a result's table into README.md between its markers.
- ``bench attention``: attribution methods on conflicting scenes (:mod:`dapt_core.cli.bench_attention`).
- ``bench bias`` / ``bench gates``: a backbone's background bias and issue 14's gates (:mod:`dapt_core.cli.bench_bias`).
- ``bench web-bundle``: synth-web's bundled prompt sets and example scenes (:mod:`dapt_core.cli.web_bundle`).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from dapt_core import paths
from dapt_core.cli.bench_attention import add_attention_parser
from dapt_core.cli.bench_bias import add_bias_parser
from dapt_core.cli.common import CAM_METHOD_NAMES, DAPT_SCHEDULES, add_backbone_args, print_json
from dapt_core.cli.web_bundle import add_web_bundle_parser
from dapt_core.constants import OFFICIAL_EPOCHS, OFFICIAL_SWITCH_EPOCH

log = logging.getLogger(__name__)

DEFAULT_RESULTS_DIR = paths.PROJECT_DIR / "docs" / "results"
DEFAULT_PROMPTS_DIR = paths.CHECKPOINT_DIR / "prompts"
DEFAULT_EXAMPLES_DIR = paths.ASSETS_DIR / "examples"
QUICK_NAME, FULL_NAME = "synth_bench_quick", "synth_bench"
DEFAULT_THREADS = 1


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(",", " ").split())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from err
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


# the library's dapt_core.experiments.background_shift.WORLDS and bias_worlds.TASK_VARIANTS (a test checks it),
# spelt here so that building the parser imports nothing heavy
WORLDS = ("synth", "web")
TASK_VARIANTS = ("home", "rehomed")


def _add_training_args(p: argparse.ArgumentParser) -> None:
    add_backbone_args(p, None, "backbone name (see `weights list`); default: the world's own (synth: synth-mini, "
                               "web: synth-web)")
    p.add_argument("--world", choices=WORLDS, default="synth",
                   help="synth: the flat-shapes world's spurious task; web: synth-web's world and its few-shot task; "
                        "default: %(default)s")
    p.add_argument("--task-variant", choices=TASK_VARIANTS, default="home",
                   help="the web task: on the web's home backgrounds (home) or on a downstream data set's own "
                        "(rehomed: each class's usual backgrounds are another class's web homes); the synth world "
                        "has only home; default: %(default)s")
    p.add_argument("--coop-class-specific", action="store_true",
                   help="CoOp (and the zero-shot method) with one context per class, as the gates' CoOp")
    p.add_argument("--cam-methods", nargs="+", choices=CAM_METHOD_NAMES, default=("gradcam",), metavar="CAM",
                   help="attribution maps of the attention metrics; the first keeps the plain columns, the others "
                        f"add their own ({', '.join(CAM_METHOD_NAMES)}); default: gradcam")
    p.add_argument("--suite-per-class", type=int, default=20,
                   help="base scenes per class of the bias suite that gives each tuned model's BG-Gap (0 = none); "
                        "default: %(default)s")
    p.add_argument("--seed", type=int, default=1, help="first task/training seed; default: %(default)s")
    p.add_argument("--epochs", type=int, default=OFFICIAL_EPOCHS, help=f"training epochs (official: {OFFICIAL_EPOCHS})")
    p.add_argument("--batch-size", type=int, default=4, help="official: 4")
    p.add_argument("--lr", type=float, default=0.0035, help="official: 0.0035")
    p.add_argument("--schedule", choices=DAPT_SCHEDULES, default="official",
                   help="DAPT loss schedule: official (triplet first, alignment terms from the switch epoch) "
                        "or joint (all terms every epoch); default: %(default)s")
    p.add_argument("--switch-epoch", type=int, default=None,
                   help=f"official schedule's switch epoch; default: round({OFFICIAL_SWITCH_EPOCH / OFFICIAL_EPOCHS:g} "
                        f"* epochs), i.e. {OFFICIAL_SWITCH_EPOCH} of {OFFICIAL_EPOCHS}")
    _ablation_args(p)
    p.add_argument("--crop-min", type=float, default=1.0,
                   help="smallest area share of the random-resized training crop; default %(default)s = flips "
                        "only (CoOp uses 0.08; crops cut or stretch the shapes of the 64 px scenes)")
    p.add_argument("--object-radius", type=float, nargs=2, metavar=("MIN", "MAX"), default=None,
                   help="object radius range as fractions of the image side, for every split; default: the "
                        "world's own (0.25 0.42, the sizes synth-mini was pre-trained on)")
    p.add_argument("--n-test", type=int, default=10, help="test images per class and split")
    p.add_argument("--n-classes", type=int, default=None, help="use the first N object classes (default all 11)")
    p.add_argument("--methods", type=_name_list, default=None, help="comma-separated subset of the methods")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help="CPU threads for torch; default %(default)s: the models are small, and on a shared "
                        "CPU more threads mostly add contention (20x slower steps measured on 2 busy cores)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds ``bench`` and its sub-commands to the ``python -m dapt_core`` parser."""
    bench = sub.add_parser("bench", help="benchmarks on the synthetic world",
                           description="Benchmarks and bundled artefacts built on the synthetic world.")
    bsub = bench.add_subparsers(dest="bench_command", required=True)

    _add_synth_parser(bsub)

    p = bsub.add_parser("synth-merge", help="merge `bench synth` results of runs that differ only in seeds",
                        description="Merge the raw JSON of `bench synth` runs made in parallel (e.g. one --seed "
                                    "per process, --n-seeds 1) into one report; prints the summary line.")
    p.add_argument("results", nargs="+", help="<name>.json files written by `bench synth`")
    p.add_argument("--out", default=str(DEFAULT_RESULTS_DIR), help="results folder; default: docs/results")
    p.add_argument("--name", default=FULL_NAME, help="file stem; default: %(default)s")
    p.set_defaults(func=run_bench_merge)

    p = bsub.add_parser("synth-prompts", help="train the bundled prompt sets on the spurious task",
                        description="Train CoOp, CoOp+DAPT, MaPLe and MaPLe+DAPT (DAPT with the ground-truth mask "
                                    "cue unless --methods says otherwise) on one spurious task and save each as "
                                    "synth-<method>.safetensors, with the benchmark metrics in its metadata.")
    _add_training_args(p)
    p.add_argument("--shots", type=int, default=16, help="training images per class; default: %(default)s")
    p.add_argument("--out", default=str(DEFAULT_PROMPTS_DIR), help="folder; default: checkpoints/prompts")
    p.set_defaults(func=run_bench_prompts)

    p = bsub.add_parser("synth-examples", help="write the bundled example images",
                        description="Aligned and conflicting test scenes of the spurious task, with exact masks.")
    p.add_argument("--seed", type=int, default=1, help="task seed (the bundled prompt sets use 1)")
    p.add_argument("--out", default=str(DEFAULT_EXAMPLES_DIR), help="folder; default: assets/examples")
    p.set_defaults(func=run_bench_examples)

    p = bsub.add_parser("synth-readme", help="copy the benchmark table into README.md",
                        description="Replace the lines between README.md's synth-bench markers (web-bench for a "
                                    "web-world result) with the table and DAPT deltas of one shot count of a "
                                    "`bench synth` result.")
    p.add_argument("--result", default=str(DEFAULT_RESULTS_DIR / f"{FULL_NAME}.json"),
                   help="result JSON; default: docs/results/synth_bench.json")
    p.add_argument("--shots", type=int, default=None, help="shot count to show; default: the largest")
    p.add_argument("--readme", default=str(paths.PROJECT_DIR / "README.md"), help="file to update")
    p.set_defaults(func=run_bench_readme)

    add_attention_parser(bsub)
    add_bias_parser(bsub)
    add_web_bundle_parser(bsub)


def _add_synth_parser(bsub: argparse._SubParsersAction) -> None:
    """``bench synth``: the background-shift benchmark."""
    p = bsub.add_parser("synth", help="background-shift benchmark: zero-shot, CoOp, MaPLe, each +DAPT",
                        description="Train and evaluate zero-shot, CoOp, CoOp+DAPT (mask, Grad-CAM), MaPLe and "
                                    "MaPLe+DAPT (mask, Grad-CAM) on the spurious-background task of the synth world "
                                    "or the few-shot task of the web world (--world web). Writes "
                                    "<name>.md/.png/.json and <name>_scenes.jsonl (per conflicting scene); the last "
                                    "stdout line is a JSON object keyed by method.")
    _add_training_args(p)
    p.add_argument("--quick", action="store_true", help="one shot count (4) and one seed")
    p.add_argument("--shots", type=_int_list, default=None, help="shot counts (default: 4 with --quick, else 1,4,16)")
    p.add_argument("--n-seeds", type=int, default=3, help="seeds of the full run: seed .. seed+n-1 (default 3)")
    p.add_argument("--out", default=str(DEFAULT_RESULTS_DIR), help="results folder; default: docs/results")
    p.add_argument("--name", default=None, help=f"file stem; default {QUICK_NAME} with --quick, else {FULL_NAME} "
                                                "(web world: web_<variant>_bench...)")
    p.add_argument("--save-prompts", default=None, metavar="DIR",
                   help="save every trained prompt set of one (seed, shots) task here as <world>-...-<method>"
                        ".safetensors, its metrics in its metadata")
    p.add_argument("--save-prompts-task", type=int, nargs=2, metavar=("SEED", "SHOTS"), default=None,
                   help="the task --save-prompts saves; default: the first seed and the largest shot count")
    p.set_defaults(func=run_bench_synth)


def _ablation_args(p: argparse.ArgumentParser) -> None:
    """Flags that change DAPT's objective away from the official one, for ablations."""
    p.add_argument("--detach-background-view", action="store_true",
                   help="ablation: DAPT's background term does not train the image side (official: it does)")
    p.add_argument("--dapt-weights", type=float, nargs=3, metavar=("TRIPLET", "FG", "BG"), default=None,
                   help="ablation: DAPT's term weights; default: the official 0.8 0.1 0.5")


def _options(args: argparse.Namespace) -> dict:
    """BenchConfig fields from the shared training arguments (also sets torch's thread count)."""
    import torch

    from dapt_core.experiments.background_shift import METHODS

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    return {"backbone": args.backbone, "weights": args.weights, "device": args.device, "epochs": args.epochs,
            "batch_size": args.batch_size, "lr": args.lr, "schedule": args.schedule,
            "switch_epoch": args.switch_epoch, "n_test": args.n_test, "n_classes": args.n_classes,
            "crop_min": args.crop_min, "object_radius": args.object_radius,
            "methods": args.methods or tuple(METHODS), "world": args.world, "task_variant": args.task_variant,
            "coop_class_specific": args.coop_class_specific, "cam_methods": tuple(args.cam_methods),
            "suite_per_class": args.suite_per_class, "detach_background_view": args.detach_background_view,
            "dapt_weights": tuple(args.dapt_weights) if args.dapt_weights else None}


def _log_run(record: dict) -> None:
    log.info("%s shots=%d seed=%d: aligned %.1f  balanced %.1f  conflicting %.1f  object attention %.3f  "
             "pointing %.3f  (%.0f s)", record["method"], record["shots"], record["seed"], record["aligned_acc"],
             record["balanced_acc"], record["conflicting_acc"], record["object_attention"],
             record["pointing_game"], record["seconds"])


def _default_name(world: str, variant: str, quick: bool) -> str:
    """synth_bench[_quick] for the synth world, web_<variant>_bench[_quick] for the web world."""
    if world == "synth":
        return QUICK_NAME if quick else FULL_NAME
    return f"{world}_{variant}_bench" + ("_quick" if quick else "")


def run_bench_synth(args: argparse.Namespace) -> int:
    from dapt_core.experiments.background_shift import full_config, quick_config, run_bench
    from dapt_core.experiments.background_shift_prompts import prompt_set_saver
    from dapt_core.experiments.background_shift_results import summary_line
    from dapt_core.experiments.background_shift_report import write_report

    options = _options(args)
    if args.shots:
        if args.quick and len(args.shots) != 1:
            raise ValueError(f"--quick runs one shot count, got --shots {','.join(map(str, args.shots))}")
        options["shots"] = args.shots
    cfg = quick_config(args.seed, **options) if args.quick else full_config(args.seed, args.n_seeds, **options)
    # the command line goes into the report only when this process is `python -m dapt_core` itself
    invoked = Path(sys.argv[0]).parent.name == paths.PACKAGE_DIR.name
    command = "python -m dapt_core " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if invoked else None
    name = args.name or _default_name(cfg.world, cfg.task_variant, args.quick)

    def write(partial: dict) -> None:
        written = write_report(partial, args.out, name, command)
        log.info("task %d/%d done; wrote %s", partial["tasks_done"], partial["tasks_total"],
                 ", ".join(str(p) for p in written.values()))

    hooks, saved = {}, []
    if args.save_prompts:
        seed, shots = args.save_prompts_task or (cfg.seeds[0], max(cfg.shots))
        hooks[(seed, shots)] = prompt_set_saver(args.save_prompts, cfg, seed, shots, saved)
    elif args.save_prompts_task:
        raise ValueError("--save-prompts-task names the task --save-prompts saves; give --save-prompts DIR too")
    result = run_bench(cfg, report=_log_run, on_task_done=write, on_trained=hooks)
    if saved:
        log.info("saved prompt sets %s", ", ".join(str(p) for p in saved))
    # several shot counts: the last line reports the largest; the JSON file has them all
    print_json(summary_line(result["summary"], max(cfg.shots)))
    return 0


def _read_result(path: str) -> dict:
    """The raw JSON that `bench synth` writes, with its per-scene values; a file that is not JSON is a ValueError
    naming it."""
    from dapt_core.experiments.background_shift_report import read_result

    return read_result(path)


def run_bench_merge(args: argparse.Namespace) -> int:
    from dapt_core.experiments.background_shift_results import merge_results, summary_line
    from dapt_core.experiments.background_shift_report import write_report

    merged = merge_results([_read_result(path) for path in args.results])
    written = write_report(merged, args.out, args.name,
                           "python -m dapt_core bench synth-merge " + " ".join(map(shlex.quote, args.results)))
    log.info("wrote %s", ", ".join(str(p) for p in written.values()))
    print_json(summary_line(merged["summary"], max(merged["config"]["shots"])))
    return 0


def run_bench_prompts(args: argparse.Namespace) -> int:
    from dapt_core.experiments.background_shift import BenchConfig
    from dapt_core.experiments.background_shift_prompts import PROMPT_SET_SUFFIXES, train_prompt_sets

    methods = args.methods or ("coop", "coop+dapt-mask", "maple", "maple+dapt-mask")
    unknown = [m for m in methods if m not in PROMPT_SET_SUFFIXES]
    if unknown:
        raise ValueError(f"--methods: no prompt set for {unknown}; choose from {', '.join(PROMPT_SET_SUFFIXES)}")
    args.methods = methods
    cfg = BenchConfig(**_options(args), shots=(args.shots,), seeds=(args.seed,))
    written = train_prompt_sets(args.out, cfg, report=_log_run)
    print_json({"out": str(Path(args.out)), "files": [p.name for p in written]})
    return 0


def run_bench_examples(args: argparse.Namespace) -> int:
    from dapt_core.experiments.background_shift_report import write_examples

    records = write_examples(args.out, seed=args.seed)
    print_json({"out": str(Path(args.out)), "examples": [r["file"] for r in records]})
    return 0


def run_bench_readme(args: argparse.Namespace) -> int:
    from dapt_core.experiments.background_shift_report import readme_block, readme_markers, replace_marked
    from dapt_core.fileio import write_bytes_atomic

    result = _read_result(args.result)
    readme = Path(args.readme)
    text = replace_marked(readme.read_text(encoding="utf-8"), readme_block(result, args.shots),
                          readme_markers(result))
    write_bytes_atomic(readme, text.encode("utf-8"))
    log.info("updated %s from %s", readme, args.result)
    return 0
