"""The worlds the bias suite and the gates run on, and each world's downstream few-shot task.

- ``synth``: the flat-shapes world of :mod:`dapt_core.world` (``synth-mini``'s). Its pre-training draws
  backgrounds independently of objects, so it has no home backgrounds of its own: "home" is *defined* as the
  spurious task's pairing of the seed (one background per class), the task's training backgrounds.
- ``web``: the web-like world of :mod:`dapt_core.world.web` (``synth-web``'s): every class has two home
  backgrounds (``HOME_BACKGROUNDS``) that its pre-training scenes sit on 85% of the time. A scene is a spec
  rendered in layers (object, background, then the camera's blur and noise), so the suite's Only-BG is the
  same background through the same camera without the object, and a Mixed scene is the same object layer on a
  fresh background layer, through the same camera.

The web world's downstream task (defined here, recorded in ``/work/notes/world-api.md``): all 24 classes;
``train``: ``shots`` scenes per class drawn as the corpus draws them (home background with probability
``p_home``, else one of the 14 others); ``test_aligned``: home backgrounds only; ``test_conflicting``: the
14 non-home backgrounds only; ``test_balanced``: all 16 backgrounds, cycled evenly per class. Each split has its
own stream (``SeedSequence(seed, spawn_key=(WEB_TASK_STREAM, split))``).

Its ``rehomed`` variant (:data:`TASK_VARIANTS`) is a downstream data set whose usual contexts are not the web's:
each class's two downstream homes are the web homes of another class (:func:`rehomed_homes`, a permutation drawn
from the seed under which no class keeps a web home of its own). ``train``: downstream home with probability
``p_home``, else one of the 14 others; ``test_aligned``: downstream homes only; ``test_conflicting``: the 12
backgrounds that are a home of the class in neither map; ``test_balanced``: all 16 cycled. Zero-shot leans on the
web's homes, which this data set does not keep, so a prompt learner tuned on its shots has something to learn: the
data set's own context (issue 14's headroom gate, registration v3, ``docs/results/gates_v3_development.md``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from dapt_core.experiments.bias_suite import SceneParts, SuiteWorld, paste_exact

WORLDS = ("synth", "web")
TEST_SPLITS = ("test_aligned", "test_balanced", "test_conflicting")
WEB_TASK_STREAM = 241  # spawn key of the web task's splits (the suite uses 221, the controls 231)
REHOME_STREAM = 261  # spawn key of the rehomed variant's permutation (the probe uses 251)
TASK_VARIANTS = ("home", "rehomed")  # the web task on the web's homes, or on a downstream data set's own


@dataclass(eq=False)
class LabelledScenes:
    """Scenes as parallel arrays."""

    images: np.ndarray  # (N, S, S, 3) uint8
    masks: np.ndarray  # (N, S, S) bool, exactly the object
    labels: np.ndarray  # (N,) int64 into the task's classnames
    backgrounds: tuple[str, ...] = ()  # background name per scene

    @classmethod
    def stack(cls, items: list[tuple[np.ndarray, np.ndarray, int, str]]) -> "LabelledScenes":
        return cls(np.stack([i[0] for i in items]), np.stack([i[1] for i in items]),
                   np.array([i[2] for i in items], dtype=np.int64), tuple(i[3] for i in items))


@dataclass(eq=False)
class DownstreamTask:
    """A few-shot task: training scenes and the three test splits, over the world's classes."""

    classnames: tuple[str, ...]
    train: LabelledScenes
    tests: dict[str, LabelledScenes]  # TEST_SPLITS -> scenes
    description: str  # one sentence for the report
    homes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # class -> its training split's home backgrounds


def synth_world(seed: int, n_classes: int | None = None) -> SuiteWorld:
    """The flat-shapes world; home = the spurious task's pairing of ``seed``.

    Args:
        seed: the task seed whose pairing is the home map.
        n_classes: use the first N object classes (and N backgrounds), as ``bench synth --n-classes`` does.
    """
    from dapt_core.world import render_background, render_scene, spurious_pairing

    objects, backgrounds = _synth_names(n_classes)
    pairing = spurious_pairing(seed, objects, backgrounds)

    def render(obj: str, bg: str, size: int, rng: np.random.Generator) -> SceneParts:
        # render_scene draws its background first, so a copy of the stream redraws exactly that background
        before = copy.deepcopy(rng)
        scene = render_scene(obj, bg, size, rng)
        return SceneParts(scene.image, scene.mask, render_background(bg, size, before))

    def rebackground(parts: SceneParts, bg: str, rng: np.random.Generator) -> np.ndarray:
        return paste_exact(parts, render_background(bg, parts.image.shape[0], rng))

    return SuiteWorld(name="synth", classnames=tuple(objects), home={c: (b,) for c, b in pairing.items()},
                      same_rule=f"synth-mini's pre-training pairs no object with any background; a class's home "
                                f"background is the one the spurious task of seed {seed} trains it on",
                      render=render, rebackground=rebackground)


def _synth_names(n_classes: int | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    from dapt_core.world import BACKGROUND_CLASSES, OBJECT_CLASSES

    if n_classes is not None and not 2 <= n_classes <= len(OBJECT_CLASSES):
        raise ValueError(f"n_classes: must lie in [2, {len(OBJECT_CLASSES)}], got {n_classes}")
    n = n_classes or len(OBJECT_CLASSES)
    return OBJECT_CLASSES[:n], BACKGROUND_CLASSES[:n] if n_classes else BACKGROUND_CLASSES


def synth_task(seed: int, shots: int, n_test: int, size: int, n_classes: int | None = None) -> DownstreamTask:
    """The spurious task of :mod:`dapt_core.world.task`: every training object on its paired background."""
    from dapt_core.world import make_task

    objects, backgrounds = _synth_names(n_classes)
    task = make_task(seed, shots, size=size, n_test=n_test, objects=objects, backgrounds=backgrounds)

    def convert(scenes) -> LabelledScenes:
        return LabelledScenes.stack([(s.image, s.mask, int(label), s.background)
                                     for s, label in zip(scenes, task.labels(scenes))])

    return DownstreamTask(task.classnames, convert(task.train), {s: convert(getattr(task, s)) for s in TEST_SPLITS},
                          f"dapt_core.world.make_task(seed={seed}, shots={shots}, n_test={n_test}): every "
                          "training object on its paired background", {c: (b,) for c, b in task.pairing.items()})


def _web_parts(spec) -> SceneParts:
    from dapt_core.world.web import composite, finish, render_background_layer, render_object_layer

    rgb, mask = render_object_layer(spec)
    background = render_background_layer(spec)
    return SceneParts(finish(composite(background, rgb, mask), spec), mask, finish(background, spec), (spec, rgb))


def web_world(n_classes: int | None = None) -> SuiteWorld:
    """The web-like world with its own home backgrounds (two per class)."""
    from dapt_core.world.web import DEFAULT_WEB_CONFIG, HOME_BACKGROUNDS, sample_spec, with_background
    from dapt_core.world.web import composite, finish, render_background_layer
    from dapt_core.world.web_shapes import WEB_OBJECT_CLASSES

    objects = WEB_OBJECT_CLASSES[:n_classes] if n_classes else WEB_OBJECT_CLASSES

    def render(obj: str, bg: str, size: int, rng: np.random.Generator) -> SceneParts:
        if size != DEFAULT_WEB_CONFIG.size:
            raise ValueError(f"the web world renders {DEFAULT_WEB_CONFIG.size} px scenes; the model takes {size} px")
        spec = sample_spec(rng, object=obj, home=bg in HOME_BACKGROUNDS[obj])
        return _web_parts(with_background(spec, bg))

    def rebackground(parts: SceneParts, bg: str, rng: np.random.Generator) -> np.ndarray:
        spec, rgb = parts.state
        layer = render_background_layer(with_background(spec, bg, int(rng.integers(2**31))))
        return finish(composite(layer, rgb, parts.mask), spec)

    return SuiteWorld(name="web", classnames=tuple(objects), home={c: HOME_BACKGROUNDS[c] for c in objects},
                      same_rule="each class's two home backgrounds (dapt_core.world.web.HOME_BACKGROUNDS), the ones "
                                "its pre-training scenes sit on 85% of the time",
                      render=render, rebackground=rebackground)


def rehomed_homes(seed: int, classnames: tuple[str, ...], attempts: int = 100_000) -> dict[str, tuple[str, ...]]:
    """A downstream data set's own homes: class ``i`` gets the web homes of class ``perm[i]``, the permutation
    drawn from ``seed`` (its own stream) again until no class keeps one of its web homes.

    Raises:
        ValueError: when ``attempts`` draws find no such permutation (too few classes).
    """
    from dapt_core.world.web import HOME_BACKGROUNDS

    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(REHOME_STREAM,)))
    for _ in range(attempts):
        perm = rng.permutation(len(classnames))
        homes = {c: HOME_BACKGROUNDS[classnames[j]] for c, j in zip(classnames, perm)}
        if not any(set(homes[c]) & set(HOME_BACKGROUNDS[c]) for c in classnames):
            return homes
    raise ValueError(f"rehomed task: no permutation of {len(classnames)} classes moves every class off its web "
                     f"homes in {attempts} draws; use more classes")


def web_task(seed: int, shots: int, n_test: int, size: int, n_classes: int | None = None,
             variant: str = "home") -> DownstreamTask:
    """The web world's few-shot task, on the web's homes or on a downstream data set's own (``variant``, see the
    module docstring)."""
    from dapt_core.world.task import cycled
    from dapt_core.world.web import (
        DEFAULT_WEB_CONFIG,
        HOME_BACKGROUNDS,
        WEB_BACKGROUND_CLASSES,
        sample_spec,
        with_background,
    )

    if variant not in TASK_VARIANTS:
        raise ValueError(f"variant: unknown web task {variant!r}; choose from {', '.join(TASK_VARIANTS)}")
    world = web_world(n_classes)
    if size != DEFAULT_WEB_CONFIG.size:
        raise ValueError(f"the web world renders {DEFAULT_WEB_CONFIG.size} px scenes; the model takes {size} px")
    rehomed = variant == "rehomed"
    homes = rehomed_homes(seed, world.classnames) if rehomed else {c: HOME_BACKGROUNDS[c] for c in world.classnames}

    def pools(name: str) -> dict[str, list[str]]:
        others = [b for b in WEB_BACKGROUND_CLASSES if b not in homes[name]]
        conflicting = [b for b in others if b not in HOME_BACKGROUNDS[name]] if rehomed else others
        return {"home": list(homes[name]), "others": others, "conflicting": conflicting}

    def split(number: int, count: int, kind: str) -> LabelledScenes:
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(WEB_TASK_STREAM, number)))
        items = []
        for label, name in enumerate(world.classnames):
            picks = cycled(rng, WEB_BACKGROUND_CLASSES, count) if kind == "balanced" else [None] * count
            pool = pools(name)
            for bg in picks:
                home = {"train": None, "aligned": True, "conflicting": False}.get(kind)
                spec = sample_spec(rng, object=name, home=home)
                if rehomed and bg is None:  # the draw's home decision, taken to the downstream map
                    at_home = spec.home if kind == "train" else kind == "aligned"
                    chosen = pool["home"] if at_home else pool["others" if kind == "train" else "conflicting"]
                    bg = chosen[int(rng.integers(len(chosen)))]
                parts = _web_parts(spec if bg is None else with_background(spec, bg))
                items.append((parts.image, parts.mask, label, parts.state[0].background))
        return LabelledScenes.stack(items)

    tests = {"test_aligned": split(1, n_test, "aligned"), "test_balanced": split(2, n_test, "balanced"),
             "test_conflicting": split(3, n_test, "conflicting")}
    if rehomed:
        description = (f"rehomed web task (dapt_core.experiments.bias_worlds.web_task, seed={seed}, shots={shots}, "
                       f"n_test={n_test}, variant='rehomed'): each class's downstream homes are another class's web "
                       f"homes; training backgrounds downstream home with probability {DEFAULT_WEB_CONFIG.p_home}, "
                       "test aligned = downstream home, conflicting = home in neither map (12), balanced = all 16 "
                       "cycled")
    else:
        description = (f"web task (dapt_core.experiments.bias_worlds.web_task, seed={seed}, shots={shots}, "
                       f"n_test={n_test}): training backgrounds home with probability {DEFAULT_WEB_CONFIG.p_home}, "
                       "test aligned = home, conflicting = the other 14, balanced = all 16 cycled")
    return DownstreamTask(world.classnames, split(0, shots, "train"), tests, description, homes)


def build(world: str, seed: int, n_classes: int | None = None) -> SuiteWorld:
    """A world by name (:data:`WORLDS`)."""
    if world == "synth":
        return synth_world(seed, n_classes)
    if world == "web":
        return web_world(n_classes)
    raise ValueError(f"world: unknown {world!r}; choose from {', '.join(WORLDS)}")


def build_task(world: str, seed: int, shots: int, n_test: int, size: int,
               n_classes: int | None = None, variant: str = "home") -> DownstreamTask:
    """A world's downstream task by name; ``variant`` (:data:`TASK_VARIANTS`) is the web world's only."""
    if world == "synth":
        if variant != "home":
            raise ValueError(f"variant: the synth world has one task; {variant!r} is the web world's")
        return synth_task(seed, shots, n_test, size, n_classes)
    if world == "web":
        return web_task(seed, shots, n_test, size, n_classes, variant)
    raise ValueError(f"world: unknown {world!r}; choose from {', '.join(WORLDS)}")
