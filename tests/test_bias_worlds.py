"""The worlds' downstream tasks: the web task on the web's homes and on a downstream data set's own (rehomed)."""

import numpy as np
import pytest

from dapt_core.experiments.bias_worlds import TEST_SPLITS, build_task, rehomed_homes, web_task
from dapt_core.world.web import HOME_BACKGROUNDS, WEB_BACKGROUND_CLASSES
from dapt_core.world.web_shapes import WEB_OBJECT_CLASSES


def _at(scenes, homes, names):
    return np.array([bg in homes[names[label]] for label, bg in zip(scenes.labels, scenes.backgrounds)])


def test_rehomed_homes_are_another_class_web_homes_and_never_a_class_own():
    homes = rehomed_homes(3, WEB_OBJECT_CLASSES)
    assert rehomed_homes(3, WEB_OBJECT_CLASSES) == homes  # a function of the seed
    assert rehomed_homes(4, WEB_OBJECT_CLASSES) != homes
    # a permutation of the web's home pairs: every pair used exactly once
    assert sorted(homes.values()) == sorted(HOME_BACKGROUNDS[c] for c in WEB_OBJECT_CLASSES)
    for name, pair in homes.items():
        assert not set(pair) & set(HOME_BACKGROUNDS[name]), name


def test_rehomed_homes_refuse_classes_that_cannot_be_moved():
    # octagon (sky, wood) and drop (sky, railway) share sky: neither order moves both off their homes
    with pytest.raises(ValueError, match="no permutation of 2 classes"):
        rehomed_homes(0, ("octagon", "drop"), attempts=50)
    assert rehomed_homes(0, ("circle", "oval")) == {"circle": HOME_BACKGROUNDS["oval"],
                                                   "oval": HOME_BACKGROUNDS["circle"]}


def test_rehomed_task_splits_follow_the_downstream_homes():
    task = web_task(5, 6, 4, 64, variant="rehomed")
    names = task.classnames
    assert task.homes == rehomed_homes(5, names)
    assert "rehomed" in task.description
    train_home = _at(task.train, task.homes, names)
    assert 0.6 < train_home.mean() < 0.97  # p_home 0.85 over 144 scenes
    assert not _at(task.train, HOME_BACKGROUNDS, names)[train_home].any()
    assert _at(task.tests["test_aligned"], task.homes, names).all()
    conflicting = task.tests["test_conflicting"]
    assert not _at(conflicting, task.homes, names).any() and not _at(conflicting, HOME_BACKGROUNDS, names).any()
    for label in range(len(names)):  # balanced: 4 scenes per class over 16 backgrounds, all different
        seen = [bg for lab, bg in zip(task.tests["test_balanced"].labels, task.tests["test_balanced"].backgrounds)
                if lab == label]
        assert len(set(seen)) == 4 and set(seen) <= set(WEB_BACKGROUND_CLASSES)
    for split in ("train", *TEST_SPLITS):  # the object layer is exactly the mask
        scenes = task.train if split == "train" else task.tests[split]
        assert scenes.masks.any(axis=(1, 2)).all() and len(scenes.labels) == len(names) * (6 if split == "train" else 4)


def test_home_task_keeps_the_web_homes_and_its_scenes():
    task = build_task("web", 5, 2, 2, 64)
    rehomed = build_task("web", 5, 2, 2, 64, variant="rehomed")
    assert task.homes == {c: HOME_BACKGROUNDS[c] for c in task.classnames}
    assert _at(task.tests["test_aligned"], HOME_BACKGROUNDS, task.classnames).all()
    assert not _at(task.tests["test_conflicting"], HOME_BACKGROUNDS, task.classnames).any()
    # the same stream: the first scene is the same object draw, on the class's downstream home instead
    assert (task.tests["test_aligned"].masks[0] == rehomed.tests["test_aligned"].masks[0]).all()
    assert rehomed.tests["test_aligned"].backgrounds[0] in rehomed.homes[task.classnames[0]]
    with pytest.raises(ValueError, match="unknown web task"):
        web_task(5, 1, 1, 64, variant="moved")
    with pytest.raises(ValueError, match="synth world has one task"):
        build_task("synth", 5, 1, 1, 64, variant="rehomed")


def test_synth_task_homes_are_its_pairing():
    from dapt_core.world import BACKGROUND_CLASSES, spurious_pairing

    task = build_task("synth", 2, 1, 1, 64, n_classes=4)
    pairing = spurious_pairing(2, task.classnames, BACKGROUND_CLASSES[:4])
    assert task.homes == {c: (b,) for c, b in pairing.items()}
    assert all(bg == pairing[task.classnames[label]] for label, bg in zip(task.train.labels, task.train.backgrounds))
