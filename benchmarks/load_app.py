"""The app under load: concurrent visitors comparing prompt sets while two training jobs run, on the loopback address.

Usage: python3 benchmarks/load_app.py [--duration 300] [--visitors 16] [--backbone synth-mini]
                                      [--out docs/results/load_app.json]

It starts ``python app.py --backbone NAME`` in a subprocess (offline, an empty user folder) and gives every
visitor its own gradio_client session and its own request: one of the example images, a pair of the bundled
prompt sets, a CAM method and a segmenter. First each request runs once with nobody else on the server (the
single-visitor reference), and so do the two training requests. Then, for ``--duration`` seconds, every visitor
repeats its comparison as fast as the server answers, while visitors 0 and 1 first submit one training job each.

What it reports, and what it checks:

- server errors: calls that raised, and ERROR lines or tracebacks in the server's log (expected: none);
- cross-talk: every answer under load equals that visitor's reference answer (the JSON summary, less its
  timings, and the table exactly, every picture by the SHA-256 of its file); each training job under load saves the same tensors and
  metrics as its reference run;
- memory: the server's resident set sampled every second, with its growth from the first to the last tenth of
  the run and the slope of a least-squares line (MB per minute);
- latency: percentiles of the comparisons under load and of the references (each alone), the training jobs'
  wall time, and the machine's load average (the machine may be shared: its 1-minute load average is sampled with the memory).

Prints a table, then one JSON line (also written to ``--out`` when given). Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STARTUP_TIMEOUT_S = 600.0
SAMPLE_S = 1.0  # memory and load-average sampling interval
MEMORY_GROWTH_LIMIT_MB = 64.0  # "flat": the last tenth's mean RSS within this of the mean after the warm-up
WARMUP_FRACTION = 0.2  # the first fifth of the run fills caches and allocator pools; growth is measured after it
SERIES_STEP_S = 10.0  # the RSS series in the JSON, one sample per this many seconds
EXAMPLES = ("00_aligned_circle_on_tree", "01_aligned_square_on_grass", "02_conflicting_triangle_on_sky",
            "03_conflicting_star_on_cloud", "04_conflicting_cross_on_grass", "05_conflicting_heart_on_ground")
CAM_METHODS = ("gradcam", "eigencam", "gradcam++")
SEGMENTERS = ("cam", "exact")
# (source, zip, learner, cue, shots, epochs, name, seed): the two training requests of the load phase
TRAININGS = (("synthetic", None, "coop", "gradcam", 2, 2, "load-train-a", 1),
             ("synthetic", None, "maple", "mask", 2, 2, "load-train-b", 2))
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "DAPT_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}


@dataclass
class Visitor:
    """One visitor's request and what happened to it."""

    index: int
    request: tuple  # the /compare arguments except the image file handle: (image path, keys, classes, seg, cam, "")
    reference: dict | None = None  # its single-visitor answer (digests)
    latencies: list[float] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    training: dict | None = None  # for visitors 0 and 1: their training job under load


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _start(backbone: str, user_dir: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, **OFFLINE_ENV, "DAPT_USER_PROMPTS": str(user_dir)}
    for name in ("DAPT_BACKBONE", "SPACE_ID"):
        env.pop(name, None)
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--backbone", backbone, "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise TimeoutError(f"the app did not answer within {STARTUP_TIMEOUT_S} s")


def _digest_file(value) -> str | None:
    path = value.get("path") if isinstance(value, dict) else value
    if not path:
        return None
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    Path(path).unlink(missing_ok=True)  # downloads pile up otherwise
    return digest


def _answer(outputs: tuple) -> dict:
    """What is compared between two answers: summary and table as they are, pictures by their bytes' digest."""
    split, gallery, table, chart, figure, summary = outputs
    summary = {k: v for k, v in summary.items() if k != "timings"}  # seconds differ from call to call
    return {"summary": summary, "table": table, "split": _digest_file(split), "chart": _digest_file(chart),
            "figure": _digest_file(figure),
            "gallery": [(item.get("caption"), _digest_file(item.get("image"))) for item in gallery]}


def _compare(client, request: tuple) -> dict:
    from gradio_client import handle_file

    image, *rest = request
    return _answer(client.predict(handle_file(image), *rest, api_name="/compare"))


def _differences(a: dict, b: dict) -> list[str]:
    return [k for k in a if a[k] != b.get(k)]


def _visitors(n: int, keys: list[str]) -> list[Visitor]:
    pairs = [(a, b) for i, a in enumerate(keys) for b in keys[i + 1:]]
    out = []
    for i in range(n):
        image = ROOT / "assets" / "examples" / f"{EXAMPLES[i % len(EXAMPLES)]}_256.png"
        request = (str(image), list(pairs[i % len(pairs)]), "", SEGMENTERS[(i // len(EXAMPLES)) % len(SEGMENTERS)],
                   CAM_METHODS[i % len(CAM_METHODS)], "")
        out.append(Visitor(i, request))
    return out


def _train(client, request: tuple) -> dict:
    started = time.perf_counter()
    status, _, metrics, saved = client.predict(*request, api_name="/train")
    return {"seconds": time.perf_counter() - started, "status": status, "metrics": metrics,
            "file": saved.get("path") if isinstance(saved, dict) else saved}


def _same_training(a: dict, b: dict) -> list[str]:
    from safetensors.torch import load_file

    ta, tb = load_file(a["file"]), load_file(b["file"])
    problems = [f"tensor {k}" for k in ta if k not in tb or not bool((ta[k] == tb[k]).all())]
    strip = {k: v for k, v in a["metrics"].items() if k != "key"}
    if strip != {k: v for k, v in b["metrics"].items() if k != "key"}:
        problems.append("metrics")
    return problems


def _run_visitor(v: Visitor, url: str, downloads: Path, deadline: float, train_request: tuple | None,
                 train_reference: dict | None) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False, download_files=str(downloads / f"visitor-{v.index}"))
    if train_request is not None:
        try:
            v.training = _train(client, train_request)
            v.training["mismatches"] = _same_training(train_reference, v.training)
        except Exception as err:  # counted, never lost with the thread
            v.errors.append(f"train: {type(err).__name__}: {err}")
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            answer = _compare(client, v.request)
        except Exception as err:
            v.errors.append(f"compare: {type(err).__name__}: {err}")
            continue
        v.latencies.append(time.perf_counter() - started)
        diff = _differences(v.reference, answer)
        if diff:
            v.mismatches.append(",".join(diff))


def _sample(pid: int, stop: threading.Event, samples: list[tuple[float, float, float]]) -> None:
    start = time.monotonic()
    while not stop.is_set():
        try:
            samples.append((time.monotonic() - start, _rss_mb(pid), os.getloadavg()[0]))
        except OSError:
            return
        stop.wait(SAMPLE_S)


def _memory(samples: list[tuple[float, float, float]]) -> dict:
    """The RSS over the run: start, end, max, the growth over the whole run and after the warm-up (the last
    tenth's mean minus the mean of the tenth that follows the warm-up), and the slope after the warm-up."""
    t = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples])
    tenth = max(1, len(rss) // 10)
    warm = min(int(len(rss) * WARMUP_FRACTION), len(rss) - tenth)
    after = slice(warm, None)
    slope = float(np.polyfit(t[after] / 60.0, rss[after], 1)[0]) if len(rss[after]) >= 2 else float("nan")
    step = max(1, int(SERIES_STEP_S / SAMPLE_S))
    return {"start_mb": round(float(rss[0]), 1), "end_mb": round(float(rss[-1]), 1),
            "max_mb": round(float(rss.max()), 1),
            "growth_whole_run_mb": round(float(rss[-tenth:].mean() - rss[:tenth].mean()), 1),
            "after_warmup_mb": round(float(rss[warm:warm + tenth].mean()), 1),
            "last_tenth_mean_mb": round(float(rss[-tenth:].mean()), 1),
            "growth_mb": round(float(rss[-tenth:].mean() - rss[warm:warm + tenth].mean()), 1),
            "slope_after_warmup_mb_per_min": round(slope, 2), "samples": len(rss),
            "series_mb": [round(float(v), 1) for v in rss[::step]]}


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), **{f"p{q}_s": round(float(np.percentile(values, q)), 3) for q in (50, 90, 95, 99)},
            "max_s": round(max(values), 3), "mean_s": round(float(np.mean(values)), 3)}


def _server_log_errors(log_path: Path) -> list[str]:
    lines = log_path.read_text(errors="replace").splitlines()
    return [line for line in lines if " ERROR " in line or line.startswith("Traceback")]


def run(args: argparse.Namespace) -> dict:
    from gradio_client import Client

    with tempfile.TemporaryDirectory(prefix="load-app-") as tmp:
        tmp = Path(tmp)
        log_path = tmp / "server.log"
        proc, url = _start(args.backbone, tmp / "user", log_path)
        try:
            client = Client(url, verbose=False, download_files=str(tmp / "reference"))
            keys = [s["key"] for s in client.predict(api_name="/prompt_sets")]
            visitors = _visitors(args.visitors, keys)
            alone = []
            for v in visitors:  # the single-visitor reference of every request
                started = time.perf_counter()
                v.reference = _compare(client, v.request)
                alone.append(time.perf_counter() - started)
            train_refs = [_train(client, request) for request in TRAININGS]
            for ref in train_refs:  # keep the reference files: the download dir is cleaned per answer
                kept = tmp / "kept" / Path(ref["file"]).name
                kept.parent.mkdir(exist_ok=True)
                shutil.copyfile(ref["file"], kept)
                ref["file"] = str(kept)
            samples: list[tuple[float, float, float]] = []
            stop = threading.Event()
            sampler = threading.Thread(target=_sample, args=(proc.pid, stop, samples), daemon=True)
            sampler.start()
            deadline = time.monotonic() + args.duration
            threads = [threading.Thread(target=_run_visitor, args=(
                v, url, tmp / "downloads", deadline, TRAININGS[v.index] if v.index < len(TRAININGS) else None,
                train_refs[v.index] if v.index < len(TRAININGS) else None)) for v in visitors]
            wall = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - wall
            stop.set()
            sampler.join()
        finally:
            proc.send_signal(signal.SIGINT)  # as Ctrl-C: the app exits through its clean-up
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        log_errors = _server_log_errors(log_path)
    latencies = [s for v in visitors for s in v.latencies]
    errors = [e for v in visitors for e in v.errors]
    mismatches = {v.index: v.mismatches for v in visitors if v.mismatches}
    trainings = [{"request": list(TRAININGS[v.index]), "reference_s": round(train_refs[v.index]["seconds"], 1),
                  "under_load_s": round(v.training["seconds"], 1) if v.training else None,
                  "mismatches": v.training.get("mismatches") if v.training else None}
                 for v in visitors[:len(TRAININGS)]]
    memory = _memory(samples[1:] if len(samples) > 1 else samples)
    loads = [s[2] for s in samples]
    checks = {"no_server_errors": not errors and not log_errors,
              "no_cross_talk": not mismatches and all(t["mismatches"] == [] for t in trainings),
              "memory_flat": abs(memory["growth_mb"]) <= MEMORY_GROWTH_LIMIT_MB}
    return {"backbone": args.backbone, "visitors": args.visitors, "duration_s": args.duration,
            "wall_s": round(wall, 1), "comparisons": len(latencies),
            "comparisons_per_s": round(len(latencies) / wall, 3), "compare_latency": _percentiles(latencies),
            "compare_latency_alone": _percentiles(alone),
            "per_visitor_comparisons": [len(v.latencies) for v in visitors], "trainings": trainings,
            "call_errors": errors[:20], "n_call_errors": len(errors), "server_log_errors": log_errors[:20],
            "cross_talk": {str(k): sorted(set(m)) for k, m in mismatches.items()}, "memory": memory,
            "load_avg_1m": {"min": round(min(loads), 2), "mean": round(float(np.mean(loads)), 2),
                            "max": round(max(loads), 2)} if loads else None,
            "cpu_count": os.cpu_count(), "memory_growth_limit_mb": MEMORY_GROWTH_LIMIT_MB, "checks": checks}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load (default: %(default)s)")
    parser.add_argument("--visitors", type=int, default=16, help="concurrent visitors (default: %(default)s)")
    parser.add_argument("--backbone", default="synth-mini", help="backbone the app serves (default: %(default)s)")
    parser.add_argument("--out", default=None, help="also write the JSON result to this file")
    args = parser.parse_args()
    if args.visitors < len(TRAININGS) or args.duration <= 0:
        parser.error(f"--visitors must be at least {len(TRAININGS)} and --duration positive")
    result = run(args)
    lat, mem = result["compare_latency"], result["memory"]
    print(f"{result['visitors']} visitors, {result['duration_s']:.0f} s of load on {result['backbone']} "
          f"({result['cpu_count']} CPUs, 1-min load average {result['load_avg_1m']})")
    alone = result["compare_latency_alone"]
    print(f"comparisons: {result['comparisons']} ({result['comparisons_per_s']}/s); latency p50 {lat.get('p50_s')} s, "
          f"p90 {lat.get('p90_s')} s, p99 {lat.get('p99_s')} s, max {lat.get('max_s')} s "
          f"(alone: p50 {alone.get('p50_s')} s, max {alone.get('max_s')} s)")
    for t in result["trainings"]:
        print(f"training {t['request'][2]}/{t['request'][3]}: alone {t['reference_s']} s, under load "
              f"{t['under_load_s']} s, differences from the single-visitor run: {t['mismatches']}")
    print(f"server RSS: {mem['start_mb']} MB at the start, {mem['after_warmup_mb']} MB after the warm-up, "
          f"{mem['last_tenth_mean_mb']} MB in the last tenth (max {mem['max_mb']}; after the warm-up "
          f"{mem['growth_mb']:+} MB, slope {mem['slope_after_warmup_mb_per_min']} MB/min)")
    print(f"errors: {result['n_call_errors']} calls, {len(result['server_log_errors'])} server log lines; "
          f"cross-talk: {result['cross_talk'] or 'none'}")
    print("checks:", result["checks"])
    line = json.dumps(result)
    print(line)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
