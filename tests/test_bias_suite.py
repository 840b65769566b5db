"""The bias suite's variants by value on tiny scenes, its arithmetic by hand, and its worlds."""

import json

import numpy as np
import pytest
import torch

from dapt_core.experiments.bias_suite import (VARIANTS, SceneParts, SuiteWorld, correct_per_scene, paired_interval,
                                              paste_exact, run_suite, suite_scenes, summarise, variant_input,
                                              wilson_interval)
from dapt_core.experiments.bias_worlds import synth_world, web_world
from dapt_core.preprocess import normalize_pixels

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SIZE = 16
# Each background is a flat colour (the red channel names it); each object a square whose green channel names it.
BG_LEVEL = {"u": 10, "v": 60, "w": 110, "x": 160}
OBJ_LEVEL = {"a": 200, "b": 220, "c": 240}
# "v" is home to both a and b, so Mixed-Rand of a must never draw v even though it is b's home.
HOME = {"a": ("u", "v"), "b": ("v", "w"), "c": ("x",)}


def _flat(bg: str, rng: np.random.Generator) -> np.ndarray:
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[..., 0] = BG_LEVEL[bg]
    image[..., 2] = rng.integers(0, 256)  # a fresh instance differs in blue
    return image


def _render(obj: str, bg: str, size: int, rng: np.random.Generator) -> SceneParts:
    background = _flat(bg, rng)
    mask = np.zeros((SIZE, SIZE), bool)
    top = int(rng.integers(0, 8))
    mask[top:top + 6, 4:10] = True
    image = background.copy()
    image[mask] = (250, OBJ_LEVEL[obj], 5)
    return SceneParts(image, mask, background)


FAKE = SuiteWorld(name="fake", classnames=("a", "b", "c"), home=HOME, same_rule="hand-made",
                  render=_render, rebackground=lambda parts, bg, rng: paste_exact(parts, _flat(bg, rng)))
BG_OF_LEVEL = {v: k for k, v in BG_LEVEL.items()}


@pytest.fixture(scope="module")
def fake_scenes():
    return suite_scenes(FAKE, per_class=12, seed=3, size=SIZE)


def test_only_fg_keeps_the_object_and_sets_the_rest_to_the_mean(fake_scenes):
    x = variant_input(fake_scenes, "only_fg", MEAN, STD)
    full = normalize_pixels(fake_scenes.images, MEAN, STD)
    inside = torch.from_numpy(fake_scenes.masks).unsqueeze(1).expand_as(x)
    assert torch.equal(x[inside], full[inside])
    assert torch.count_nonzero(x[~inside]) == 0  # 0 after normalisation is the data set's mean colour
    shown = x.permute(0, 2, 3, 1) * torch.tensor(STD) + torch.tensor(MEAN)  # back to [0, 1] pixels
    assert torch.allclose(shown[~torch.from_numpy(fake_scenes.masks)], torch.tensor(MEAN).expand(
        int((~fake_scenes.masks).sum()), 3), atol=1e-6)


def test_no_fg_hides_exactly_the_object(fake_scenes):
    x = variant_input(fake_scenes, "no_fg", MEAN, STD)
    full = normalize_pixels(fake_scenes.images, MEAN, STD)
    inside = torch.from_numpy(fake_scenes.masks).unsqueeze(1).expand_as(x)
    assert torch.count_nonzero(x[inside]) == 0
    assert torch.equal(x[~inside], full[~inside])


def test_only_bg_is_the_background_without_the_object(fake_scenes):
    outside = ~fake_scenes.masks
    assert np.array_equal(fake_scenes.only_bg[outside], fake_scenes.images[outside])
    inside = fake_scenes.only_bg[fake_scenes.masks]
    assert not np.any(inside[:, 0] == 250)  # no object pixel is left under the mask
    expected = normalize_pixels(fake_scenes.only_bg, MEAN, STD)
    assert torch.equal(variant_input(fake_scenes, "only_bg", MEAN, STD), expected)


def test_mixed_variants_keep_the_object_and_draw_backgrounds_by_the_rules(fake_scenes):
    for variant in ("mixed_same", "mixed_rand"):
        images = getattr(fake_scenes, variant)
        assert np.array_equal(images[fake_scenes.masks], fake_scenes.images[fake_scenes.masks])
        # the background actually drawn (read off the pixels) is the recorded one
        drawn = [BG_OF_LEVEL[int(img[~m][0, 0])] for img, m in zip(images, fake_scenes.masks)]
        assert drawn == fake_scenes.backgrounds[variant]
    names = FAKE.classnames
    for label, orig, same, rand in zip(fake_scenes.labels, fake_scenes.backgrounds["original"],
                                       fake_scenes.backgrounds["mixed_same"], fake_scenes.backgrounds["mixed_rand"]):
        home = HOME[names[label]]
        assert orig in home and same in home
        assert rand not in home
    rands_of_a = {r for lab, r in zip(fake_scenes.labels, fake_scenes.backgrounds["mixed_rand"]) if lab == 0}
    assert rands_of_a == {"w", "x"}  # b's home minus a's own (v) and c's home
    assert np.bincount(fake_scenes.labels).tolist() == [12, 12, 12]


def test_a_fresh_background_is_a_new_instance(fake_scenes):
    # Mixed-Same draws a new instance even when it is the same background class
    same_class = [i for i, (o, s) in enumerate(zip(fake_scenes.backgrounds["original"],
                                                   fake_scenes.backgrounds["mixed_same"])) if o == s]
    assert same_class
    differs = [not np.array_equal(fake_scenes.mixed_same[i], fake_scenes.images[i]) for i in same_class]
    assert any(differs)


def test_scenes_are_seeded(fake_scenes):
    again = suite_scenes(FAKE, per_class=12, seed=3, size=SIZE)
    other = suite_scenes(FAKE, per_class=12, seed=4, size=SIZE)
    assert np.array_equal(again.mixed_rand, fake_scenes.mixed_rand)
    assert not np.array_equal(other.images, fake_scenes.images)


def test_summarise_bg_gap_and_only_bg_by_hand():
    ones, zeros = np.ones(10, bool), np.zeros(10, bool)
    same = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0], bool)  # 80%
    rand = np.array([1, 0, 1, 0, 1, 0, 1, 0, 0, 1], bool)  # 50%
    only_bg = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], bool)  # 30%
    out = summarise({"original": ones, "only_fg": ones, "only_bg": only_bg, "no_fg": zeros, "mixed_same": same,
                     "mixed_rand": rand}, n_classes=5)
    assert out["mixed_same"] == 80.0 and out["mixed_rand"] == 50.0
    assert out["bg_gap"] == 30.0
    d = 100.0 * (same.astype(float) - rand)  # paired: +100 x4, 0 x5, -100 x1
    half = 1.959964 * d.std(ddof=1) / np.sqrt(10)
    assert out["bg_gap_ci"] == [round(30.0 - half, 2), round(30.0 + half, 2)]
    assert out["chance"] == 20.0 and out["only_bg_over_chance"] == 1.5
    assert out["n"] == 10 and out["no_fg"] == 0.0


def test_wilson_interval_against_the_textbook_value():
    low, high = wilson_interval(8, 10)  # 95% Wilson interval of 8/10: 0.4902 to 0.9433
    assert round(low, 2) == 49.02 and round(high, 2) == 94.33
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12)


def test_paired_interval_leaves_out_nans_and_needs_two():
    mean, low, high = paired_interval(np.array([0.1, 0.3, np.nan]))
    assert mean == pytest.approx(0.2)
    assert high - mean == pytest.approx(1.959964 * np.std([0.1, 0.3], ddof=1) / np.sqrt(2))
    with pytest.raises(ValueError, match="two"):
        paired_interval(np.array([0.5, np.nan]))


def test_correct_per_scene_scores_against_the_labels(fake_scenes):
    n_classes = 3

    def oracle(images):  # reads the object's class off its green channel, which it cannot see in only_bg
        return torch.nn.functional.one_hot(torch.from_numpy(fake_scenes.labels[:len(images)]), n_classes).float()

    assert correct_per_scene(oracle, fake_scenes, "original", MEAN, STD, torch.device("cpu")).all()

    def shifted(images):
        return torch.nn.functional.one_hot(torch.from_numpy((fake_scenes.labels[:len(images)] + 1) % 3), 3).float()

    assert not correct_per_scene(shifted, fake_scenes, "mixed_rand", MEAN, STD, torch.device("cpu")).any()


def test_mixed_rand_needs_an_option():
    with pytest.raises(ValueError, match="Mixed-Rand"):
        SuiteWorld(name="shared", classnames=("a", "b"), home={"a": ("u",), "b": ("u",)}, same_rule="",
                   render=_render, rebackground=lambda p, b, r: p.image)
    with pytest.raises(ValueError, match="no home background for b"):
        SuiteWorld(name="partial", classnames=("a", "b"), home={"a": ("u",)}, same_rule="",
                   render=_render, rebackground=lambda p, b, r: p.image)


def test_synth_world_only_bg_is_the_scene_outside_the_mask():
    scenes = suite_scenes(synth_world(2, n_classes=3), per_class=2, seed=5, size=32)
    outside = ~scenes.masks
    assert np.array_equal(scenes.only_bg[outside], scenes.images[outside])
    assert not np.array_equal(scenes.only_bg[scenes.masks], scenes.images[scenes.masks])
    world = synth_world(2, n_classes=3)
    for label, rand in zip(scenes.labels, scenes.backgrounds["mixed_rand"]):
        assert rand not in world.home[world.classnames[label]]


def test_web_world_variants_follow_its_layers():
    from dapt_core.world.web import HOME_BACKGROUNDS, finish, render_background_layer, render_web_scene

    world = web_world(n_classes=4)
    rng = np.random.default_rng(0)
    parts = world.render("circle", HOME_BACKGROUNDS["circle"][1], 64, rng)
    spec = parts.state[0]
    assert spec.background == HOME_BACKGROUNDS["circle"][1]
    assert np.array_equal(parts.image, render_web_scene(spec).image)
    assert np.array_equal(parts.background, finish(render_background_layer(spec), spec))
    scenes = suite_scenes(world, per_class=2, seed=1, size=64)
    for label, same, rand in zip(scenes.labels, scenes.backgrounds["mixed_same"], scenes.backgrounds["mixed_rand"]):
        home = HOME_BACKGROUNDS[world.classnames[label]]
        assert same in home and rand not in home
    with pytest.raises(ValueError, match="64 px"):
        world.render("circle", "grass", 32, rng)


def test_run_suite_on_a_tiny_model_is_json_and_uses_the_learner(tiny_backbone):
    from dapt_core.learners import build_learner

    world = synth_world(1, n_classes=3)
    result = run_suite(tiny_backbone, world, per_class=2, seed=0)
    json.dumps(result)
    assert result["n"] == 6 and set(VARIANTS) <= set(result)
    assert result["bg_gap"] == round(result["mixed_same"] - result["mixed_rand"], 2)
    learner = build_learner("coop", tiny_backbone, list(world.classnames))
    tuned = run_suite(tiny_backbone, world, per_class=2, seed=0, learner=learner)
    assert tuned["classifier"] == "prompt learner (coop)"
    with pytest.raises(ValueError, match="classes differ"):
        run_suite(tiny_backbone, world, 2, 0, learner=build_learner("coop", tiny_backbone, ["x", "y", "z"]))


def test_only_bg_ceiling_counts_the_classes_sharing_each_background():
    from dapt_core.experiments.bias_suite import only_bg_ceiling

    # HOME: u is a's alone, v is shared by a and b, w is b's, x is c's
    assert only_bg_ceiling(FAKE, ["u", "v", "w", "x"]) == pytest.approx(100.0 * (1 + 0.5 + 1 + 1) / 4)
    assert only_bg_ceiling(FAKE, ["v", "v"]) == pytest.approx(50.0)
    assert only_bg_ceiling(synth_world(1, n_classes=3), ["grass", "sky"]) == 100.0
