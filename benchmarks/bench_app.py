"""The web app under use: start-up time, latency of one comparison alone and under concurrent clients, peak memory.

Usage: python3 benchmarks/bench_app.py [--reps 8] [--clients 4] [--per-client 3]
                                       [--backbones synth-mini ViT-B-16-random]

For each backbone it starts ``python app.py --backbone NAME`` in a subprocess (offline, prompt sets in a temporary
user folder), times the command until the page answers, then times ``/compare`` with two CoOp prompt sets
through gradio_client: ``--reps`` calls one after another, then ``--clients`` clients at once. Peak memory is
the server's peak resident set (``VmHWM``). A concurrent call that fails is counted (``failed``) and its error
printed, not timed. One more start without ``--backbone`` times plain ``python app.py``.
The bundled backbone uses its shipped prompt sets when there are two; otherwise, and for ``ViT-B-16-random``,
two random CoOp sets are made for it first. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STARTUP_TIMEOUT_S = 600.0
POLL_S = 0.2
IMAGE_SHAPE = (480, 640, 3)  # a typical photo; it is squashed to the model's input anyway
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "DAPT_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
MAKE_SETS = """
import sys, torch
from dapt_core.backbones import load_backbone
from dapt_core.checkpoint import save_prompt_set
from dapt_core.learners import build_learner
backbone = load_backbone(sys.argv[1], device="cpu")
classes = [f"class {i}" for i in range(10)]
for seed, name in enumerate(("bench-coop-a", "bench-coop-b")):
    torch.manual_seed(seed)
    save_prompt_set(build_learner("coop", backbone, classes), f"{sys.argv[2]}/{name}.safetensors")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _start(backbone: str | None, user_dir: Path) -> tuple[subprocess.Popen, str, float]:
    """Starts the app and waits until the page answers; returns the process, its URL and the seconds it took."""
    port = _free_port()
    cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(port)] + (["--backbone", backbone] if backbone else [])
    env = {**os.environ, **OFFLINE_ENV, "DAPT_USER_PROMPTS": str(user_dir)}
    env.pop("DAPT_BACKBONE", None)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    while time.perf_counter() - started < STARTUP_TIMEOUT_S:
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return proc, url, time.perf_counter() - started
        except OSError:
            time.sleep(POLL_S)
    proc.kill()
    raise TimeoutError(f"{' '.join(cmd)} did not answer within {STARTUP_TIMEOUT_S} s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _prompt_sets(backbone: str, user_dir: Path) -> str:
    """Makes two random CoOp sets unless the bundled backbone ships two; says which were used."""
    if backbone == "synth-mini":
        from dapt_core.app_support import BUNDLED_PROMPT_DIR

        if len(list(BUNDLED_PROMPT_DIR.glob("*.safetensors"))) >= 2:
            return "bundled"
    subprocess.run([sys.executable, "-c", MAKE_SETS, backbone, str(user_dir)], check=True, cwd=ROOT,
                   env={**os.environ, **OFFLINE_ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return "two random CoOp sets"


def _compare_call(client, image: str, keys: list[str]) -> float:
    from gradio_client import handle_file

    started = time.perf_counter()
    client.predict(handle_file(image), keys, "", "cam", "gradcam", "", api_name="/compare")
    return time.perf_counter() - started


def _bench_backbone(backbone: str, image: str, args: argparse.Namespace) -> dict:
    from gradio_client import Client

    with tempfile.TemporaryDirectory(prefix="bench-app-") as tmp:
        user_dir = Path(tmp)
        sets = _prompt_sets(backbone, user_dir)
        proc, url, startup = _start(backbone, user_dir)
        try:
            client = Client(url, verbose=False)
            listed = client.predict(api_name="/prompt_sets")
            keys = [s["key"] for s in listed if s["learner"] == "coop"][:2] or [s["key"] for s in listed][:2]
            if len(keys) < 2:
                raise RuntimeError(f"{backbone}: fewer than two prompt sets are listed: {keys}")
            _compare_call(client, image, keys)  # warm-up: lazy imports, learner cache
            alone = [_compare_call(client, image, keys) for _ in range(args.reps)]
            clients = [Client(url, verbose=False) for _ in range(args.clients)]
            together: list[float] = []
            failures: list[str] = []
            lock = threading.Lock()

            def visitor(c) -> None:
                for _ in range(args.per_client):
                    try:
                        seconds = _compare_call(c, image, keys)
                    except Exception as err:  # counted and reported, so one failure hides no timings
                        with lock:
                            failures.append(f"{type(err).__name__}: {err}")
                        continue
                    with lock:
                        together.append(seconds)

            wall = time.perf_counter()
            threads = [threading.Thread(target=visitor, args=(c,)) for c in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - wall
            peak = _peak_rss_mb(proc.pid)
        finally:
            _stop(proc)
    return {"backbone": backbone, "prompt_sets": sets, "startup_s": round(startup, 2),
            "p50_s": round(_percentile(alone, 50), 3), "p95_s": round(_percentile(alone, 95), 3),
            "concurrent_clients": args.clients, "concurrent_p50_s": round(_percentile(together, 50), 3),
            "concurrent_p95_s": round(_percentile(together, 95), 3),
            "concurrent_throughput_per_s": round(len(together) / wall, 3), "concurrent_failed": len(failures),
            "concurrent_errors": sorted(set(failures)), "peak_rss_mb": round(peak, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=8, help="sequential comparisons timed per backbone")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--per-client", type=int, default=3, help="comparisons per concurrent client")
    parser.add_argument("--backbones", nargs="+", default=["synth-mini", "ViT-B-16-random"])
    args = parser.parse_args()

    from dapt_core.weights import weights_status

    with tempfile.TemporaryDirectory(prefix="bench-app-") as tmp:
        rng = np.random.default_rng(0)
        pixels = (rng.random(IMAGE_SHAPE) * 80).astype(np.uint8)
        pixels[120:360, 200:440] = (220, 60, 40)  # an object for the segmenter
        image = str(Path(tmp) / "photo.png")
        Image.fromarray(pixels).save(image)
        proc, _, plain_startup = _start(None, Path(tmp) / "user")
        plain_rss = _peak_rss_mb(proc.pid)
        _stop(proc)
        rows, notes = [], []
        for backbone in args.backbones:
            if backbone == "synth-mini" and weights_status("synth-mini") == "missing":
                notes.append("synth-mini: weights not built yet (checkpoints/synth-mini.safetensors), skipped")
                continue
            rows.append(_bench_backbone(backbone, image, args))

    print(f"python app.py (default backbone choice, offline): page up after {plain_startup:.1f} s, "
          f"peak RSS {plain_rss:.0f} MB")
    header = ("backbone", "start s", "p50 s", "p95 s", f"{args.clients}x p50 s", f"{args.clients}x p95 s",
              "calls/s", "failed", "peak RSS MB")
    print(" | ".join(header))
    for r in rows:
        print(" | ".join(str(v) for v in (r["backbone"], r["startup_s"], r["p50_s"], r["p95_s"],
                                          r["concurrent_p50_s"], r["concurrent_p95_s"],
                                          r["concurrent_throughput_per_s"], r["concurrent_failed"],
                                          r["peak_rss_mb"])))
        for error in r["concurrent_errors"]:
            print(f"note: {r['backbone']}: a concurrent call failed: {error}")
    for note in notes:
        print("note:", note)
    print(json.dumps({"plain_startup_s": round(plain_startup, 2), "plain_peak_rss_mb": round(plain_rss, 1),
                      "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
                      "reps": args.reps, "results": rows, "notes": notes}))


if __name__ == "__main__":
    main()
