"""ZeroGPU: the ``spaces.GPU`` decorator for the handlers that run the model, where ``spaces`` is installed.

On ZeroGPU hardware a Space holds a GPU only while a function decorated with ``spaces.GPU`` runs; the
decorated call runs in a forked worker process, its arguments and result are pickled across, and it is
refused when the visitor's GPU quota is below the duration it asks for. So each handler asks for the seconds
its work needs (``duration``; a number or a function of the handler's arguments). Without the ``spaces``
package (a local run, the tests) :func:`gpu` returns the function unchanged; with it but off ZeroGPU,
``spaces.GPU`` itself returns the function unchanged.

What the worker process means for this app: a training job runs inside the decorated ``train`` call, in the
worker's copy of the training queue, so its progress streams as usual and the prompt set it saves lands in
the shared user folder; but the Cancel button, whose handler runs in the main process, does not reach it.

Importing ``spaces`` on ZeroGPU imports gradio; this module is only called by the app process, where gradio
is imported anyway, and it imports ``spaces`` only when :func:`gpu` is called.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Callable, TypeVar

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable)
Duration = float | Callable[..., float]  # seconds, or a function of the handler's arguments giving them

# Seconds of GPU each of the app's model handlers asks for (a call is refused when the visitor's quota is below
# it: ask for what the work needs). Training asks for a fixed part plus a part per epoch.
COMPARE_GPU_S = 60
UPLOAD_GPU_S = 20
MASKS_GPU_S = 60  # masks of a visitor's labelled images (SAM is seconds per image, GrabCut under one)
TRAIN_GPU_BASE_S, TRAIN_GPU_S_PER_EPOCH = 30, 10


def train_gpu_seconds(source: str, zip_file: object, learner: str, cue: str, shots: float, epochs: float,
                      *rest: object) -> float:
    """The GPU seconds a training call asks for (its arguments are the app's train handler's)."""
    from dapt_core.app_support.training import requested_epochs

    return TRAIN_GPU_BASE_S + TRAIN_GPU_S_PER_EPOCH * requested_epochs(epochs)


HANDLER_SECONDS: dict[str, Duration] = {"compare": COMPARE_GPU_S, "train": train_gpu_seconds,
                                        "upload_prompt_set": UPLOAD_GPU_S, "make_masks": MASKS_GPU_S}


def attach(handlers: object) -> None:
    """Decorates the model handlers of ``handlers`` (an instance) with :func:`gpu`: on ZeroGPU a GPU is attached
    only inside these calls."""
    for name, seconds in HANDLER_SECONDS.items():
        setattr(handlers, name, gpu(seconds)(getattr(handlers, name)))


def spaces_module() -> ModuleType | None:
    """The ``spaces`` package when it is installed (or already imported), else None."""
    try:
        return importlib.import_module("spaces")
    except ImportError:
        return None


def gpu(duration: Duration) -> Callable[[F], F]:
    """A decorator: ``spaces.GPU(duration=duration)`` where ``spaces`` is installed, else the identity.

    Args:
        duration: seconds of GPU one call may hold, or a function of the call's arguments that returns them.

    Raises:
        ValueError: a duration that is not a positive number nor a function.
    """
    if not callable(duration) and (isinstance(duration, bool) or not isinstance(duration, (int, float))
                                   or duration <= 0):
        raise ValueError(f"a GPU duration is a positive number of seconds or a function, got {duration!r}")
    spaces = spaces_module()
    if spaces is None:
        return _unchanged
    return spaces.GPU(duration=duration)


def _unchanged(fn: F) -> F:
    return fn
