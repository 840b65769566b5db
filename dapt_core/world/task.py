"""A few-shot task whose training set carries a spurious background cue.

Every object class is paired with a background. Training images always show an object on its paired
background, so a classifier can score perfectly by reading the background alone. Three test splits
then tell object-reading from background-reading apart:

- ``test_aligned``: the pairing still holds (background reading looks perfect here);
- ``test_conflicting``: every object sits on a background other than its own, usually another
  class's, so background reading is misled;
- ``test_balanced``: backgrounds are uniform and independent of the object.

Each part of a task (the pairing and each split) draws from its own random stream, derived from the
task seed with `numpy.random.SeedSequence` spawn keys, so training and test images never coincide
and changing one split's size leaves the others unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dapt_core.world.shapes import OBJECT_CLASSES, check_object
from dapt_core.world.textures import BACKGROUND_CLASSES, check_background
from dapt_core.world.scenes import (
    DEFAULT_SCENE_CONFIG,
    Scene,
    SceneConfig,
    check_count,
    check_names,
    check_size,
    render_scene,
)

# Spawn keys of the task's independent random streams. Distinct from generate()'s stream, which
# seeds a SeedSequence without a spawn key.
_STREAMS: dict[str, int] = {
    "pairing": 1,
    "train": 2,
    "test_aligned": 3,
    "test_conflicting": 4,
    "test_balanced": 5,
}


@dataclass(eq=False)
class SpuriousTask:
    """A few-shot classification task with a background shortcut in its training set."""

    classnames: tuple[str, ...]  # object classes; a scene's label is classnames.index(scene.object)
    pairing: dict[str, str]  # object class -> the background it is always trained on
    train: list[Scene]  # `shots` scenes per class, each object on its paired background
    test_aligned: list[Scene]  # n_test per class, each object on its paired background
    test_conflicting: list[Scene]  # n_test per class, each object on a background other than its own
    test_balanced: list[Scene]  # n_test per class, backgrounds uniform and independent of the object

    def labels(self, scenes: Sequence[Scene]) -> np.ndarray:
        """Class indices of `scenes` into `classnames`, (N,) int64."""
        index = {name: i for i, name in enumerate(self.classnames)}
        return np.array([index[scene.object] for scene in scenes], dtype=np.int64)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    return int(seed)


def _stream(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAMS[name],)))


def cycled(rng: np.random.Generator, options: Sequence[str], n: int) -> list[str]:
    """`n` picks from `options`, made of back-to-back shuffles so that counts differ by at most one."""
    rounds = -(-n // len(options))
    order = np.concatenate([rng.permutation(len(options)) for _ in range(rounds)]) if rounds else []
    return [options[int(i)] for i in order[:n]]


def spurious_pairing(
    seed: int,
    objects: Sequence[str] | None = None,
    backgrounds: Sequence[str] | None = None,
) -> dict[str, str]:
    """Pair every object class with a background, at random but as one-to-one as possible.

    With at least as many backgrounds as objects, no two objects share a background. With more
    objects, backgrounds are reused as evenly as possible (use counts differ by at most one).

    Args:
        seed: non-negative task seed; the same seed and names give the same pairing.
        objects: object classes; default `OBJECT_CLASSES`.
        backgrounds: background classes; default `BACKGROUND_CLASSES`.

    Returns:
        Dict object -> background, in the order of `objects`.
    """
    seed = _check_seed(seed)
    objects = check_names(objects, OBJECT_CLASSES, check_object, "objects")
    backgrounds = check_names(backgrounds, BACKGROUND_CLASSES, check_background, "backgrounds")
    picks = cycled(_stream(seed, "pairing"), backgrounds, len(objects))
    return dict(zip(objects, picks))


def make_task(
    seed: int,
    shots: int,
    size: int = 64,
    n_test: int = 10,
    objects: Sequence[str] | None = None,
    backgrounds: Sequence[str] | None = None,
    config: SceneConfig = DEFAULT_SCENE_CONFIG,
) -> SpuriousTask:
    """Build a spurious-background few-shot task.

    Args:
        seed: non-negative task seed; the same arguments always give the same task.
        shots: training scenes per class, >= 1.
        size: image side in pixels.
        n_test: scenes per class in each of the three test splits, >= 1. With n_test at least the
            number of backgrounds, every class meets every background in `test_balanced`.
        objects: object classes (the task's classes, in label order); default `OBJECT_CLASSES`.
        backgrounds: background classes, at least two; default `BACKGROUND_CLASSES`.
        config: placement and contrast settings.

    Returns:
        The task; every split lists its scenes class by class, in the order of `classnames`.
    """
    seed = _check_seed(seed)
    shots = check_count(shots, "shots", 1)
    n_test = check_count(n_test, "n_test", 1)
    size = check_size(size)
    objects = check_names(objects, OBJECT_CLASSES, check_object, "objects")
    backgrounds = check_names(backgrounds, BACKGROUND_CLASSES, check_background, "backgrounds")
    if len(backgrounds) < 2:
        raise ValueError(f"backgrounds: a conflicting split needs at least two backgrounds, got {backgrounds}")
    pairing = spurious_pairing(seed, objects, backgrounds)

    def split(name: str, count: int, choose: Callable[[np.random.Generator, str, int], list[str]]) -> list[Scene]:
        rng = _stream(seed, name)
        scenes = []
        for obj in objects:
            for bg in choose(rng, obj, count):
                scenes.append(render_scene(obj, bg, size, rng, config=config))
        return scenes

    def paired(rng: np.random.Generator, obj: str, count: int) -> list[str]:
        return [pairing[obj]] * count

    def conflicting(rng: np.random.Generator, obj: str, count: int) -> list[str]:
        return cycled(rng, [bg for bg in backgrounds if bg != pairing[obj]], count)

    def balanced(rng: np.random.Generator, obj: str, count: int) -> list[str]:
        return cycled(rng, backgrounds, count)

    return SpuriousTask(
        classnames=objects,
        pairing=pairing,
        train=split("train", shots, paired),
        test_aligned=split("test_aligned", n_test, paired),
        test_conflicting=split("test_conflicting", n_test, conflicting),
        test_balanced=split("test_balanced", n_test, balanced),
    )
