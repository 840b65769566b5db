"""Mutation testing of the DAPT method's core with mutmut 3: which small bugs in the method would the tests catch?

Usage: python benchmarks/mutation.py [--rev HEAD] [--label after] [--limit-s 1800] [--json FILE] [--resume]
       python benchmarks/mutation.py --planted [--rev HEAD] [--only NAME ...]
       python benchmarks/mutation.py --compare BEFORE.json AFTER.json   (Markdown tables of two reports)
       python benchmarks/mutation.py --planted-table PLANTED.json       (Markdown table of a --planted run)

Not part of CI and not a project dependency: a script tool. Install it with ``pip install mutmut`` (written
against mutmut 3.8; mutmut 3 rewrites every function into a trampoline that switches between the original and
its mutants, copies the package into ``mutants/`` and runs, for each mutant, the tests that call that function).

What it does:

1. exports the committed tree at ``--rev`` (``git archive``) into a private work folder (``--work``, default
   ``/tmp/dapt-mutation/<label>``), so the shared working tree is never touched and other engineers' edits in
   progress are not measured; ``pytest.ini`` is removed there (its ``pythonpath = .`` would put the unmutated
   package ahead of mutmut's copy);
2. writes a ``[mutmut]`` section into that copy's ``setup.cfg``: the files of :data:`FILES`, the fast test subset
   of :data:`TESTS` (the tests of the method that run in seconds; the training-run, CLI and whole-backbone tests
   take minutes on a 2-core machine and are left out), one process (``--max-children 1``), ``fork`` isolation,
   one torch thread;
3. runs mutmut on the mutants of the functions in :data:`FUNCTIONS` only (a fixed subset of the method's core,
   so that a run fits in about 25 minutes on a shared 2-core machine and runs before and after a change test
   the same mutants), bounded by ``--limit-s``;
4. reads every mutant's verdict from mutmut's ``.meta`` files and writes a JSON report: counts per status, the
   kill rate (killed or timed out over all mutants of the subset, mutants no selected test reaches counting
   as survivors) per file and in all, and the diff of every surviving mutant.

``--planted`` runs instead the hand-planted bugs of ``benchmarks/mutation.planted.json`` (the wiring bugs that
issue 11 names, each with the tests that must catch it): their tests must pass on the export first; then each
is applied alone to the export, its tests run
(pytest ``-x``), the file is restored; a bug whose line is no longer in the code is reported as not applied
(and the run fails: the list must follow the code).

The before/after figures of docs/results/mutation.md come from two runs of this script:
``--rev <commit before the new tests> --label before`` and ``--rev <commit with them> --label after``.
"""

from __future__ import annotations

import argparse
import configparser
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# files mutmut mutates (their other functions are copied as they are)
FILES = (
    "dapt_core/objective.py",
    "dapt_core/learners/base.py",
    "dapt_core/learners/coop.py",
    "dapt_core/learners/maple.py",
    "dapt_core/encoders.py",
    "dapt_core/train.py",
    "dapt_core/attention/cam.py",
    "dapt_core/checkpoint.py",
    "dapt_core/preprocess.py",  # the views (objective.decouple calls split_views since 92e0184)
)

# mutant names (mutmut 3: module.x_function / module.xǁClassǁmethod, then __mutmut_N): the method's wiring,
# without argument checking, messages and the training loop's bookkeeping
FUNCTIONS = (
    # the objective: views, the three terms, the background prompts, the schedule
    "dapt_core.objective.x_decouple__mutmut_*",
    "dapt_core.preprocess.x_split_views__mutmut_*",
    "dapt_core.preprocess.x_hide__mutmut_*",
    "dapt_core.objective.x_foreground_alignment_loss__mutmut_*",
    "dapt_core.objective.x_background_alignment_loss__mutmut_*",
    "dapt_core.objective.x_pull_push_loss__mutmut_*",
    "dapt_core.objective.x_background_prompts__mutmut_*",
    "dapt_core.objective.x_background_text_features__mutmut_*",
    "dapt_core.objective.x_dapt_losses__mutmut_*",
    "dapt_core.objective.x_loss_weights__mutmut_*",
    "dapt_core.objective.x_run_switch_epoch__mutmut_*",
    "dapt_core.objective.x_scaled_switch_epoch__mutmut_*",
    # the learners: learned context in the prompt, MaPLe's coupled deep prompts
    "dapt_core.learners.base.xǁPromptLearnerǁ_embed_with_context__mutmut_*",
    "dapt_core.learners.base.xǁPromptLearnerǁ_encode_prompts__mutmut_*",
    "dapt_core.learners.base.xǁPromptLearnerǁplain_prompt_features__mutmut_*",
    "dapt_core.learners.coop.xǁCoOpǁtext_features__mutmut_*",
    "dapt_core.learners.coop.xǁCoOpǁprompt_text_features__mutmut_*",
    "dapt_core.learners.coop.xǁCoOpǁencode_image__mutmut_*",
    "dapt_core.learners.maple.xǁMaPLeǁvisual_prompts__mutmut_*",
    "dapt_core.learners.maple.xǁMaPLeǁtext_features__mutmut_*",
    "dapt_core.learners.maple.xǁMaPLeǁencode_image__mutmut_*",
    "dapt_core.learners.maple.xǁMaPLeǁdeep_text_prompts__mutmut_*",
    # the prompted towers over open_clip's blocks
    "dapt_core.encoders.x__run_blocks__mutmut_*",
    "dapt_core.encoders.x_encode_text_embeddings__mutmut_*",
    "dapt_core.encoders.x_encode_image_prompted__mutmut_*",
    # training: the learning rate, the Grad-CAM cue, the metrics
    "dapt_core.train.x_lr_at__mutmut_*",
    "dapt_core.train.x_refresh_gradcam_masks__mutmut_*",
    "dapt_core.train.x_classification_metrics__mutmut_*",
    "dapt_core.train.x_harmonic_mean__mutmut_*",
    # the CAM cue
    "dapt_core.attention.cam.xǁPromptClassifierǁforward__mutmut_*",
    "dapt_core.attention.cam.x_vit_reshape__mutmut_*",
    "dapt_core.attention.cam.x_default_target_layer__mutmut_*",
    "dapt_core.attention.cam.x__package_cams__mutmut_*",
    # checkpoints: which backbone a prompt set fits
    "dapt_core.checkpoint.x_check_compatible__mutmut_*",
    "dapt_core.checkpoint.x_backbone_fingerprint__mutmut_*",
)

# the fast test subset (pytest arguments); files missing at --rev are left out and listed in the report
# (tests_not_run, with any file added here after the run for --report-only)
TESTS = (
    "tests/test_objective.py",
    "tests/test_learners.py",
    "tests/test_cam.py",
    "tests/test_checkpoint.py",
    "tests/test_background_official.py",
    "tests/test_method_pins.py",
    "tests/test_method_pins_training.py",
    "tests/test_method_pins_towers.py",
    "tests/test_prompt_weights.py",
    "tests/test_fast_paths.py",  # the plain paths, kept for equivalence, and which path ran
)
DESELECT = (  # each builds a whole ViT-B/16 or trains for several epochs: seconds to minutes per mutant
    "tests/test_learners.py::test_every_registered_backbone_runs_both_learners",
    "tests/test_checkpoint.py::test_other_backbone_is_refused_naming_both",
    "tests/test_checkpoint.py::test_resume_after_interruption_matches_an_uninterrupted_run",
)
KILLED = {"killed", "timeout"}
PLANTED = Path(__file__).resolve().with_name("mutation.planted.json")


def resolve(rev: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", rev], check=True, capture_output=True,
                          text=True).stdout.strip()


def export_tree(commit: str, work: Path, tests_commit: str) -> None:
    """The committed tree at ``commit`` in ``work`` (emptied first), with ``tests/`` from ``tests_commit``."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
    if tests_commit != commit:
        shutil.rmtree(work / "tests")
        tests = subprocess.run(["git", "-C", str(ROOT), "archive", tests_commit, "tests"], check=True,
                               capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(work)], input=tests, check=True)
    (work / "pytest.ini").unlink(missing_ok=True)


def write_config(work: Path, tests: list[str]) -> None:
    """The ``[mutmut]`` section of the copy's setup.cfg (mutmut reads its settings from there)."""
    lines = ["[mutmut]", "source_paths = dapt_core", "only_mutate ="] + [f"    {f}" for f in FILES]
    lines += ["pytest_add_cli_args_test_selection ="] + [f"    {t}" for t in tests]
    lines += [f"    --deselect={d}" for d in DESELECT if d.split("::")[0] in tests]
    lines += ["process_isolation = fork", "use_git_change_detection = false", ""]
    with open(work / "setup.cfg", "a", encoding="utf-8") as f:
        f.write("\n".join(lines))


def configured_tests(work: Path) -> tuple[list[str], list[str]]:
    """The test files and deselected tests the run in ``work`` was configured with (its setup.cfg), which
    an earlier version of :data:`TESTS` may have chosen (``--report-only``)."""
    parser = configparser.ConfigParser()
    parser.read(work / "setup.cfg", encoding="utf-8")
    args = parser.get("mutmut", "pytest_add_cli_args_test_selection", fallback="").split()
    return ([a for a in args if not a.startswith("--")],
            [a.split("=", 1)[1] for a in args if a.startswith("--deselect=")])


def verdicts(work: Path) -> dict[str, tuple[str, str]]:
    """Status and source file of every mutant of :data:`FUNCTIONS`, from mutmut's ``.meta`` files."""
    from mutmut.stats import status_by_exit_code

    found = {}
    for meta in (work / "mutants").rglob("*.py.meta"):
        source = str(meta.relative_to(work / "mutants"))[:-len(".meta")]
        codes = json.loads(meta.read_text(encoding="utf-8")).get("exit_code_by_key", {})
        for name, code in codes.items():
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in FUNCTIONS):
                found[name] = (status_by_exit_code[code], source)
    return dict(sorted(found.items()))


def mutant_diff(name: str, source: str) -> str:
    """The changed lines of one mutant (run from the work folder: mutmut reads its config from there)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    lines = get_diff_for_mutant(name, path=source).splitlines()
    return "\n".join(line for line in lines if line[:1] in "+-" and not line.startswith(("+++", "---")))


def score(statuses: list[str]) -> dict:
    counts = Counter(statuses)
    killed = sum(counts[s] for s in KILLED)
    return {"mutants": len(statuses), "killed": killed, "counts": dict(sorted(counts.items())),
            "kill_rate": round(100.0 * killed / len(statuses), 1) if statuses else None}


def report(found: dict[str, tuple[str, str]], work: Path) -> dict:
    by_module: dict[str, list[str]] = {}
    for name, (status, _) in found.items():
        by_module.setdefault(name.split(".x", 1)[0], []).append(status)
    here = Path.cwd()
    os.chdir(work)
    try:
        survivors = [{"name": n, "status": s, "diff": mutant_diff(n, source)}
                     for n, (s, source) in found.items() if s not in KILLED]
    finally:
        os.chdir(here)
    return {"total": score([s for s, _ in found.values()]),
            "by_module": {m: score(s) for m, s in sorted(by_module.items())}, "survivors": survivors,
            "statuses": {name: status for name, (status, _) in found.items()}}


def mutmut_version() -> str:
    try:
        return version("mutmut")
    except PackageNotFoundError:
        return "not installed"


def run_mutmut(work: Path, limit_s: int, names: list[str] | None = None) -> tuple[int, bool, str]:
    """Runs mutmut on :data:`FUNCTIONS` (or on the named mutants only: mutmut reruns every mutant a pattern
    names, so resuming passes the unchecked ones by name); returns (seconds, whether it finished in time,
    the end of its log)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.perf_counter()
    try:
        run = subprocess.run(["mutmut", "run", "--max-children", "1", *(names or FUNCTIONS)], cwd=work, env=env,
                             capture_output=True, text=True, timeout=limit_s)
        finished, log_tail = run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    except subprocess.TimeoutExpired as err:
        finished, log_tail = False, f"stopped after {limit_s} s: {str(err.stdout or '')[-1000:]}"
    return round(time.perf_counter() - started), finished, log_tail


def run_planted(work: Path, only: list[str] | None = None) -> list[dict]:
    """Applies each bug of :data:`PLANTED` (those whose name contains one of ``only``, if given) alone, runs
    its tests, restores the file; one record per bug."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    records = []
    bugs = [b for b in json.loads(PLANTED.read_text(encoding="utf-8")) if not only or any(o in b["bug"] for o in only)]
    files = sorted({t for b in bugs for t in b["tests"]})
    clean = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files], cwd=work, env=env,
                           capture_output=True, text=True)
    if clean.returncode != 0:  # a test that fails without a bug would count every bug as caught
        sys.exit(f"the tests fail on the unmodified code: {clean.stdout[-1500:]}")
    for bug in bugs:
        path = work / bug["file"]
        original = path.read_text(encoding="utf-8")
        record = {"bug": bug["bug"], "file": bug["file"]}
        if original.count(bug["old"]) != 1:
            records.append({**record, "applied": False})
            print(f"not applied (the line is not in the code): {bug['bug']}", flush=True)
            continue
        path.write_text(original.replace(bug["old"], bug["new"]), encoding="utf-8")
        try:
            run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                                  *bug["tests"]], cwd=work, env=env, capture_output=True, text=True)
        finally:
            path.write_text(original, encoding="utf-8")
        failed = [line.split(" - ")[0] for line in run.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        records.append({**record, "applied": True, "caught": run.returncode != 0, "by": failed[:1]})
        print(f"{'caught' if run.returncode else 'MISSED'}: {bug['bug']} {failed[:1]}", flush=True)
    return records


def _cell(killed: int, mutants: int, bold: bool = False) -> str:
    text = f"{killed}/{mutants} ({round(100.0 * killed / mutants, 1)}%)" if mutants else "-"
    return f"**{text}**" if bold else text


def compare(before: dict, after: dict) -> str:
    """Markdown: the kill rate per module and in all of two reports, then over the mutants both reports name.

    Mutant names are numbered within their function, so the shared line compares the same mutations exactly
    when both runs mutated the same commit (``--tests-rev``: new tests, same mutants); across commits a
    function whose code changed may number other mutations alike.
    """
    rows = ["| module | before | after |", "|---|---|---|"]
    for module in sorted(set(before["by_module"]) | set(after["by_module"])):
        cells = [_cell(r["by_module"][module]["killed"], r["by_module"][module]["mutants"])
                 if module in r["by_module"] else "-" for r in (before, after)]
        rows.append(f"| {module} | {cells[0]} | {cells[1]} |")
    rows.append(f"| all | {_cell(before['total']['killed'], before['total']['mutants'], True)} | "
                f"{_cell(after['total']['killed'], after['total']['mutants'], True)} |")
    if "statuses" in before and "statuses" in after:
        shared = sorted(set(before["statuses"]) & set(after["statuses"]))
        kills = [sum(r["statuses"][n] in KILLED for n in shared) for r in (before, after)]
        same = " (same commit)" if before.get("commit") == after.get("commit") else ""
        rows.append(f"| mutants in both{same} | {_cell(kills[0], len(shared), True)} | "
                    f"{_cell(kills[1], len(shared), True)} |")
    return "\n".join(rows)


def planted_table(result: dict) -> str:
    """Markdown: each planted bug of a ``--planted`` report, whether it was caught and by which test."""
    rows = [f"Commit {result['commit'][:10]}.", "", "| bug | file | caught by |", "|---|---|---|"]
    for r in result["bugs"]:
        verdict = ("not applied" if not r["applied"] else
                   f"`{r['by'][0].removeprefix('FAILED ').removeprefix('ERROR ')}`" if r["caught"] and r["by"] else
                   "caught (pytest failed)" if r["caught"] else "**MISSED**")
        rows.append(f"| {r['bug']} | {r['file']} | {verdict} |")
    applied = [r for r in result["bugs"] if r["applied"]]
    rows.append(f"| **{sum(r['caught'] for r in applied)}/{len(applied)} caught** | | |")
    return "\n".join(rows)


def planted_main(args: argparse.Namespace) -> int:
    work = (args.work or Path("/tmp/dapt-mutation") / "planted").resolve()
    commit = resolve(args.rev)
    export_tree(commit, work, resolve(args.tests_rev) if args.tests_rev else commit)
    records = run_planted(work, args.only)
    out = args.json or work / "planted.json"
    out.write_text(json.dumps({"commit": commit, "bugs": records}, indent=1) + "\n", encoding="utf-8")
    applied = [r for r in records if r["applied"]]
    print(f"{sum(r['caught'] for r in applied)}/{len(applied)} planted bugs caught "
          f"({len(records) - len(applied)} not applied); report: {out}")
    return 0 if len(applied) == len(records) and all(r["caught"] for r in applied) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="HEAD", help="commit to test (its committed tree, not the working tree)")
    parser.add_argument("--tests-rev", help="take tests/ from this commit instead (new tests, same mutants)")
    parser.add_argument("--label", default="after", help="name of the run (work folder, report)")
    parser.add_argument("--work", type=Path, help="work folder (default /tmp/dapt-mutation/LABEL)")
    parser.add_argument("--limit-s", type=int, default=1800, help="wall-clock bound of the mutmut run")
    parser.add_argument("--json", type=Path, help="where to write the report (default WORK/report.json)")
    parser.add_argument("--report-only", action="store_true", help="only read the verdicts of an earlier run")
    parser.add_argument("--resume", action="store_true", help="run the mutants an earlier run left unchecked")
    parser.add_argument("--planted", action="store_true", help="run the hand-planted bugs instead of mutmut")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="--planted: only the bugs whose name has NAME")
    parser.add_argument("--planted-table", type=Path, metavar="FILE", help="Markdown table of a --planted report")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"), help="tables of two reports")
    args = parser.parse_args()
    if args.compare:
        print(compare(*(json.loads(path.read_text(encoding="utf-8")) for path in args.compare)))
        return 0
    if args.planted_table:
        print(planted_table(json.loads(args.planted_table.read_text(encoding="utf-8"))))
        return 0
    if args.planted:
        return planted_main(args)
    if shutil.which("mutmut") is None:
        sys.exit("mutmut is not installed: pip install mutmut")
    work = (args.work or Path("/tmp/dapt-mutation") / args.label).resolve()
    commit = resolve(args.rev)
    tests_commit = resolve(args.tests_rev) if args.tests_rev else commit
    out = args.json or work / "report.json"
    seconds, finished, log_tail = None, True, ""
    if (args.report_only or args.resume) and out.exists():  # keep the run's own duration
        earlier = json.loads(out.read_text(encoding="utf-8"))
        seconds, finished = earlier.get("seconds"), earlier.get("finished", True)
    if args.resume:  # the mutants an earlier run stopped before (--limit-s), in its work folder
        unchecked = [name for name, (status, _) in verdicts(work).items() if status == "not checked"]
        more, finished, log_tail = run_mutmut(work, args.limit_s, unchecked) if unchecked else (0, True, "")
        seconds = (seconds or 0) + more
    elif not args.report_only:
        export_tree(commit, work, tests_commit)
        write_config(work, [t for t in TESTS if (work / t).exists()])
        seconds, finished, log_tail = run_mutmut(work, args.limit_s)
    tests, deselected = configured_tests(work)
    found = verdicts(work)
    result = {"label": args.label, "rev": args.rev, "commit": commit, "tests_commit": tests_commit,
              "seconds": seconds, "finished": finished,
              "mutmut": mutmut_version(),
              "tests": tests, "deselected": deselected, "functions": list(FUNCTIONS),
              "tests_not_run": [t for t in TESTS if t not in tests], **report(found, work)}
    if not finished:
        result["log_tail"] = log_tail
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    total = result["total"]
    print(f"{args.label} ({commit[:10]}): {total['killed']}/{total['mutants']} mutants killed "
          f"({total['kill_rate']}%) in {seconds} s; {total['counts']}")
    for module, s in result["by_module"].items():
        print(f"  {module}: {s['killed']}/{s['mutants']} ({s['kill_rate']}%)")
    print(f"report: {out}")
    return 0 if finished else 1


if __name__ == "__main__":
    sys.exit(main())
