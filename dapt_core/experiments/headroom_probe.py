"""How much room a downstream task leaves a text-side prompt learner on a frozen backbone (issue 14, gates).

CoOp changes only the class text vectors: its classifier is linear in the frozen image features. So a linear
probe (multinomial logistic regression) on those features bounds what any such classifier can read from them.
:func:`run_probe` measures, on one task and seed: zero-shot; CoOp trained as the gates train it, with its
per-epoch loss; a linear probe fitted on the task's own training shots; and one fitted on many balanced scenes
(``probe_per_class`` per class, backgrounds cycled evenly, a stream of its own), the ceiling of a linear read-out
of the features with ample unbiased data. Accuracies are percent on every test split of the task.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from dapt_core.experiments.bias_worlds import TEST_SPLITS, DownstreamTask, LabelledScenes

log = logging.getLogger(__name__)

LEARNER_TITLES = {"coop": "CoOp", "maple": "MaPLe"}
PROBE_STREAM = 251  # the balanced probe set's seed is drawn from SeedSequence(seed, spawn_key=(PROBE_STREAM,))


@dataclass(frozen=True)
class ProbeConfig:
    """A linear probe on L2-normalised image features."""

    c: float = 1.0  # inverse L2 strength, as scikit-learn's C: loss = sum CE + ||W||^2 / (2 C)
    max_iter: int = 500  # L-BFGS iterations (full batch)


@torch.no_grad()
def image_features(learner, scenes: LabelledScenes, batch_size: int = 256) -> torch.Tensor:
    """(N, E) normalised image features of the scenes through the learner's (frozen) image side."""
    from dapt_core.experiments.bias_gates import _inputs

    backbone = learner.backbone
    with backbone.lock:
        return torch.cat([learner.encode_image(_inputs(backbone, scenes, slice(s, s + batch_size))).float()
                          for s in range(0, len(scenes.labels), batch_size)])


def fit_probe(features: torch.Tensor, labels: np.ndarray, n_classes: int,
              cfg: ProbeConfig = ProbeConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by full-batch L-BFGS.

    Args:
        features: (N, E) float features.
        labels: (N,) ints in [0, n_classes).
        n_classes: number of classes (a class without samples still gets a row).
        cfg: regularisation and iterations.

    Returns:
        weight (C, E) and bias (C,); the logits of x are ``x @ weight.T + bias``.
    """
    x = features.detach().double()
    y = torch.as_tensor(labels, dtype=torch.long)
    weight = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=cfg.max_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight.T + bias, y, reduction="sum")
        loss = loss + (weight ** 2).sum() / (2.0 * cfg.c)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach().float(), bias.detach().float()


def probe_accuracy(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor, labels: np.ndarray) -> float:
    """Percent of rows whose argmax logit is their label."""
    predicted = (features.float() @ weight.T + bias).argmax(-1).numpy()
    return 100.0 * float(np.mean(predicted == labels))


def probe_seed(seed: int) -> int:
    """The task seed of the balanced probe set of a run seeded ``seed`` (its own stream, never a task's)."""
    return int(np.random.SeedSequence(seed, spawn_key=(PROBE_STREAM,)).generate_state(1)[0] % 2**31)


def _accuracies(learner, task: DownstreamTask) -> dict:
    """Percent correct on the task's training scenes and on each test split."""
    from dapt_core.experiments.bias_gates import accuracy

    found = {"train": round(accuracy(learner, task.train), 2)}
    found.update({split: round(accuracy(learner, task.tests[split]), 2) for split in TEST_SPLITS})
    return found


def _tuned(backbone, task: DownstreamTask, seed: int, settings) -> dict:
    """``settings.learner`` trained on the task as the gates train CoOp: accuracies and the per-epoch loss."""
    from dapt_core.experiments.bias_gates import train_coop

    history: list[dict] = []
    tuned = train_coop(backbone, task.classnames, task.train, seed, settings, history=history)
    return {**_accuracies(tuned, task), "loss_per_epoch": [round(float(epoch["ce"]), 4) for epoch in history]}


def run_probe(backbone, world: str, seed: int, *, shots: int = 16, n_test: int = 20, probe_per_class: int = 200,
              probe: ProbeConfig = ProbeConfig(), settings=None, n_classes: int | None = None) -> dict:
    """Zero-shot, a trained prompt learner and two linear probes on one world's downstream task (see the module
    docstring). The learner is ``settings.learner`` (CoOp by default; MaPLe also moves the image side, so the
    probes do not bound it); zero-shot is always CoOp from "a photo of a", untrained.

    Returns:
        A JSON-able dict: ``learner``, ``zero_shot``, the learner's name (``coop`` ...: accuracies with
        ``loss_per_epoch``), ``probe_task_shots`` and ``probe_balanced`` (accuracy per test split), the settings
        and the run time.
    """
    from dapt_core.constants import ZERO_SHOT_CONTEXT
    from dapt_core.experiments.bias_gates import train_coop
    from dapt_core.experiments.bias_worlds import build_task
    from dapt_core.experiments.gate_thresholds import SETTINGS

    settings = settings or SETTINGS
    started = time.perf_counter()
    task = build_task(world, seed, shots, n_test, backbone.image_size, n_classes, settings.task)
    balanced = build_task(world, probe_seed(seed), 1, probe_per_class, backbone.image_size,
                          n_classes).tests["test_balanced"]
    zero = train_coop(backbone, task.classnames, None, seed, replace(settings, learner="coop", class_specific=False))
    features = {split: image_features(zero, task.tests[split]) for split in TEST_SPLITS}
    out = {"backbone": backbone.name, "pretrained": backbone.pretrained, "world": world, "seed": seed,
           "task": task.description, "shots": shots, "n_test": n_test, "probe_per_class": probe_per_class,
           "probe": asdict(probe), "context": ZERO_SHOT_CONTEXT, "units": "percent",
           "learner": settings.learner, "zero_shot": _accuracies(zero, task),
           settings.learner: _tuned(backbone, task, seed, settings)}
    n = len(task.classnames)
    for name, scenes in (("probe_task_shots", task.train), ("probe_balanced", balanced)):
        weight, bias = fit_probe(image_features(zero, scenes), scenes.labels, n, probe)
        out[name] = {split: round(probe_accuracy(weight, bias, features[split], task.tests[split].labels), 2)
                     for split in TEST_SPLITS}
    out["seconds"] = round(time.perf_counter() - started, 1)
    log.info("headroom probe: %s", {k: out[k] for k in ("zero_shot", settings.learner, "probe_task_shots",
                                                        "probe_balanced")})
    return out


def probe_markdown(result: dict, command: str | None) -> str:
    """A short report: one row per classifier, one column per test split."""
    lines = [f"# Headroom probe of `{result['backbone']}` ({result['pretrained']}), world `{result['world']}`, "
             f"seed {result['seed']}", "", f"Task: {result['task']}.", "",
             "| classifier | train | " + " | ".join(TEST_SPLITS) + " |", "|---" * (len(TEST_SPLITS) + 2) + "|"]
    learner = result.get("learner", "coop")
    title = LEARNER_TITLES.get(learner, learner)
    rows = (("zero-shot (\"a photo of a\")", "zero_shot"), (f"{title}, trained as the gates train CoOp", learner),
            (f"linear probe on the task's {result['shots']} shots per class", "probe_task_shots"),
            (f"linear probe on {result['probe_per_class']} balanced scenes per class", "probe_balanced"))
    for row_title, key in rows:
        found = result[key]
        train = f"{found['train']:.2f}" if "train" in found else "-"
        lines.append(f"| {row_title} | {train} | " + " | ".join(f"{found[s]:.2f}" for s in TEST_SPLITS) + " |")
    lines += ["", f"{title}'s training loss per epoch: "
              + ", ".join(f"{v:.3f}" for v in result[learner]["loss_per_epoch"])
              + f". Run time {result['seconds']:.0f} s.", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    return "\n".join(lines)
