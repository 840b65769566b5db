"""The gates: verdicts on fake measurements, the control scenes, the thresholds in the model card, the CLI."""

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dapt_core.cli import main
from dapt_core.experiments.bias_gates import control_scenes, overall, settings_dict, verdicts
from dapt_core.experiments.bias_suite import SceneParts, SuiteWorld, paste_exact
from dapt_core.experiments.gate_thresholds import SETTINGS, THRESHOLDS

CARD = Path(__file__).resolve().parents[1] / "checkpoints" / "synth-web.md"


def _measured(bg_gap=12.0, only_bg=3.5, zero=70.0, coop=76.0, ci=(0.02, 0.08)):
    return {"suite": {"bg_gap": bg_gap, "only_bg_over_chance": only_bg},
            # the other splits carry numbers that would pass or fail differently, so reading a wrong split shows
            "headroom": {"zero_shot_test_balanced": zero, "coop_test_balanced": coop,
                         "zero_shot_test_aligned": 99.0, "coop_test_aligned": 99.5,
                         "zero_shot_test_conflicting": 10.0, "coop_test_conflicting": 40.0},
            "attention": {"difference_ci": list(ci)}}


def _passed(measured):
    return {row["gate"]: row["passed"] for row in verdicts(measured)}


def test_every_gate_passes_on_passing_numbers():
    rows = verdicts(_measured())
    assert [r["gate"] for r in rows] == ["bg_gap", "only_bg", "headroom_zero_shot", "headroom_coop_gain",
                                         "attention_separation"]
    assert all(r["passed"] is True for r in rows) and overall(rows) is True
    assert rows[3]["measured"] == 6.0  # the gain on the balanced split


@pytest.mark.parametrize("change, gate", [
    ({"bg_gap": 9.99}, "bg_gap"),
    ({"only_bg": 2.99}, "only_bg"),
    ({"zero": 80.01, "coop": 90.0}, "headroom_zero_shot"),
    ({"coop": 74.99}, "headroom_coop_gain"),
    ({"ci": (-0.001, 0.08)}, "attention_separation"),
    ({"ci": (0.0, 0.08)}, "attention_separation"),  # the interval must lie wholly above 0
])
def test_each_gate_fails_just_past_its_threshold(change, gate):
    passed = _passed(_measured(**change))
    assert passed[gate] is False
    assert [g for g, ok in passed.items() if ok is not True] == [gate]
    assert overall(verdicts(_measured(**change))) is False


def test_thresholds_are_inclusive_where_written_so():
    passed = _passed(_measured(bg_gap=10.0, only_bg=3.0, zero=80.0, coop=85.0))
    assert all(passed.values())


def test_missing_measurements_are_not_measured_not_passed():
    measured = _measured()
    del measured["attention"]
    rows = verdicts(measured)
    assert rows[-1]["passed"] is None and rows[-1]["measured"] is None
    assert overall(rows) is None
    measured["suite"]["bg_gap"] = 1.0
    assert overall(verdicts(measured)) is False


def test_registered_only_with_the_written_settings():
    assert settings_dict(SETTINGS, THRESHOLDS)["registered"] is True
    assert settings_dict(replace(SETTINGS, epochs=1), THRESHOLDS)["registered"] is False
    assert settings_dict(SETTINGS, replace(THRESHOLDS, bg_gap_min=5.0))["registered"] is False


SIZE = 16
OBJ = {"a": 200, "b": 220, "c": 240}
BGS = {"u": 10, "v": 60, "w": 110}
HOME = {"a": ("u",), "b": ("v",), "c": ("w",)}


def _render(obj, bg, size, rng):
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[..., 0] = BGS[bg]
    mask = np.zeros((SIZE, SIZE), bool)
    mask[4:10, 4:10] = True
    image[mask] = (250, OBJ[obj], 0)
    return SceneParts(image, mask, image.copy())


WORLD = SuiteWorld("fake", ("a", "b", "c"), HOME, "hand-made", _render,
                   lambda parts, bg, rng: paste_exact(parts, parts.background))


def _objects(scenes):
    level = {v: k for k, v in OBJ.items()}
    return [level[int(img[5, 5, 1])] for img in scenes.images]


def test_balanced_control_shows_the_label_on_every_background():
    scenes = control_scenes(WORLD, "balanced", shots=30, seed=0, size=SIZE)
    names = WORLD.classnames
    assert _objects(scenes) == [names[label] for label in scenes.labels]
    for label in range(3):
        seen = {bg for lab, bg in zip(scenes.labels, scenes.backgrounds) if lab == label}
        assert seen == {"u", "v", "w"}


def test_background_control_carries_the_label_only_in_the_background():
    scenes = control_scenes(WORLD, "background", shots=30, seed=0, size=SIZE)
    names = WORLD.classnames
    assert all(bg in HOME[names[label]] for label, bg in zip(scenes.labels, scenes.backgrounds))
    objects = _objects(scenes)
    for label in range(3):  # every object class appears under every label
        assert {o for o, lab in zip(objects, scenes.labels) if lab == label} == {"a", "b", "c"}
    agree = np.mean([o == names[lab] for o, lab in zip(objects, scenes.labels)])
    assert agree < 0.6  # about a third; the label's own object is not favoured
    with pytest.raises(ValueError, match="unknown control"):
        control_scenes(WORLD, "object", 1, 0, SIZE)


@pytest.mark.skipif(not CARD.exists(), reason="checkpoints/synth-web.md is not written yet")
def test_model_card_states_the_thresholds_the_command_reads():
    text = CARD.read_text(encoding="utf-8")
    section = text[text.index("## Gates"):]
    t = THRESHOLDS
    for value in (t.bg_gap_min, t.only_bg_over_chance_min, t.headroom_zero_shot_max, t.headroom_coop_gain_min):
        assert re.search(rf"\b{value:g}\b", section), value
    assert t.headroom_split in section and f"{SETTINGS.shots} shots" in section


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_bias_command_round_trip_on_a_tiny_model(tmp_path, capsys):
    argv = ["bench", "bias", "--backbone", "tiny-vit", "--per-class", "2", "--n-classes", "3", "--seed", "4",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    line = _last_json(capsys.readouterr().out)
    stem = tmp_path / "bias_suite_tiny-vit_seed4"
    saved = json.loads(stem.with_suffix(".json").read_text())
    assert saved["command"] == ("python -m dapt_core bench bias --backbone tiny-vit --world synth --seed 4 "
                                "--per-class 2 --n-classes 3")
    assert {k: v for k, v in saved.items() if k != "command"} == line
    assert line["n"] == 6 and line["seed"] == 4
    assert "| mixed_rand |" in stem.with_suffix(".md").read_text() and stem.with_suffix(".png").stat().st_size
    assert main(argv[:-2] + ["--per-class", "0", "--out", str(tmp_path / "no")]) == 2
    assert not (tmp_path / "no").exists()


def test_gates_command_round_trip_on_a_tiny_model(tmp_path, capsys):
    argv = ["bench", "gates", "--backbone", "tiny-vit", "--per-class", "2", "--n-classes", "3", "--shots", "1",
            "--n-test", "2", "--epochs", "1", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    line = _last_json(out)
    assert line["registered"] is False  # not the written settings: never reported as the gates' verdict
    assert list(line["gates"]) == ["bg_gap", "only_bg", "headroom_zero_shot", "headroom_coop_gain",
                                   "attention_separation"]
    saved = json.loads((tmp_path / "bias_suite_gates_tiny-vit_seed1.json").read_text())
    assert [r["passed"] for r in saved["gates"]] == [line["gates"][g]["passed"] for g in line["gates"]]
    assert saved["headroom"]["zero_shot_test_balanced"] == saved["gates"][2]["measured"]
    assert "bg_gap" in out.splitlines()[0]
    report = (tmp_path / "bias_suite_gates_tiny-vit_seed1.md").read_text()
    assert "other settings than the registered" in report and "](bias_suite_tiny-vit_seed1.png)" in report
    suite = json.loads((tmp_path / "bias_suite_tiny-vit_seed1.json").read_text())  # the suite's own report too
    assert suite["bg_gap"] == saved["suite"]["bg_gap"] == saved["gates"][0]["measured"]
    assert suite["command"].startswith("python -m dapt_core bench bias --backbone tiny-vit --world synth --seed 1")

    # the verdict goes into a model card between its markers, everything else kept
    card = tmp_path / "card.md"
    card.write_text("# card\n\n## Gates\n\nwritten before\n<!-- gates verdict: start -->\nold\n"
                    "<!-- gates verdict: end -->\nafter\n")
    result = tmp_path / "bias_suite_gates_tiny-vit_seed1.json"
    assert main(["bench", "gates-card", "--result", str(result), "--card", str(card)]) == 0
    text = card.read_text()
    assert text.startswith("# card\n\n## Gates\n\nwritten before\n")
    assert text.endswith("<!-- gates verdict: end -->\nafter\n")
    assert "\nold\n" not in text and "Not the registered settings: no verdict" in text
    assert f"| bg_gap | {saved['gates'][0]['measured']:.2f} |" in text
    assert "](bias_suite_tiny-vit_seed1.png)" in text and "Copied from `bias_suite_gates_tiny-vit_seed1.json`" in text
    capsys.readouterr()
    bare = tmp_path / "bare.md"
    bare.write_text("# no markers\n")
    assert main(["bench", "gates-card", "--result", str(result), "--card", str(bare)]) == 2
    assert bare.read_text() == "# no markers\n"
    assert main(["bench", "gates-card", "--result", str(bare), "--card", str(card)]) == 2
    assert "not a result written by `bench gates`" in capsys.readouterr().err


def test_a_run_on_some_classes_is_not_registered(tiny_backbone, monkeypatch):
    from dapt_core.experiments import bias_gates

    monkeypatch.setattr(bias_gates, "measure_headroom", lambda *a, **k: _measured()["headroom"])
    monkeypatch.setattr(bias_gates, "measure_attention", lambda *a, **k: {"difference_ci": [0.1, 0.2]})
    suite = {"backbone": "tiny-vit", "world": "synth", "seed": 1, "per_class": SETTINGS.suite_per_class,
             "classifier": "zero-shot, ...", "bg_gap": 20.0, "only_bg": 40.0, "only_bg_over_chance": 4.0}
    some = bias_gates.run_gates(tiny_backbone, "synth", 1, n_classes=3, suite=suite)
    assert some["registered"] is False and some["passed"] is True
    every = bias_gates.run_gates(tiny_backbone, "synth", 1, suite=suite)
    assert every["registered"] is True and every["weights"] is None and every["weights_sha256"] is None


def test_run_gates_refuses_a_suite_of_another_run(tiny_backbone):
    from dapt_core.experiments.bias_gates import run_gates

    suite = {"backbone": "tiny-vit", "world": "synth", "seed": 2, "per_class": SETTINGS.suite_per_class,
             "classifier": "zero-shot, ..."}
    with pytest.raises(ValueError, match="not on this backbone"):
        run_gates(tiny_backbone, "synth", 1, suite=suite)


def test_the_parser_offers_the_library_worlds():
    from dapt_core.cli.bench_bias import WORLD_CHOICES
    from dapt_core.experiments.bias_worlds import WORLDS

    assert WORLD_CHOICES == ("auto", *WORLDS)


def test_bias_command_measures_a_saved_prompt_set(tmp_path, capsys, tiny_backbone):
    from dapt_core.checkpoint import save_prompt_set
    from dapt_core.experiments.bias_worlds import synth_world
    from dapt_core.learners import build_learner

    classes = list(synth_world(1, n_classes=3).classnames)
    path = save_prompt_set(build_learner("coop", tiny_backbone, classes), tmp_path / "tiny-coop.safetensors")
    argv = ["bench", "bias", "--backbone", "tiny-vit", "--per-class", "2", "--n-classes", "3", "--prompts", str(path),
            "--out", str(tmp_path)]
    assert main(argv) == 0
    line = _last_json(capsys.readouterr().out)
    assert line["classifier"] == "prompt learner (coop)" and line["prompt_set"] == "tiny-coop.safetensors"
    saved = json.loads((tmp_path / "bias_suite_tiny-vit_tiny-coop_seed1.json").read_text())
    assert saved["command"].endswith(f"--prompts {path}")
    wrong = save_prompt_set(build_learner("coop", tiny_backbone, ["x", "y", "z"]), tmp_path / "other.safetensors")
    assert main(argv[:-4] + ["--prompts", str(wrong), "--out", str(tmp_path / "no")]) == 2
    assert "classes differ" in capsys.readouterr().err and not (tmp_path / "no").exists()


def test_accuracy_scores_every_batch_against_its_own_labels():
    import threading
    from types import SimpleNamespace

    import torch

    from dapt_core.experiments import bias_gates
    from dapt_core.experiments.bias_worlds import LabelledScenes

    labels = np.array([0, 2, 1, 1, 0, 2, 2], dtype=np.int64)
    images = np.repeat((labels * 100).astype(np.uint8)[:, None, None, None], 4, axis=1).repeat(4, 2).repeat(3, 3)
    scenes = LabelledScenes(images, np.ones(images.shape[:3], bool), labels)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    levels = torch.tensor([(v / 255 - 0.5) / 0.25 for v in (0, 100, 200)])

    class Reader:  # names the class whose grey level the picture has; half-wrong when told to be
        backbone = SimpleNamespace(lock=threading.Lock(), mean=mean, std=std, device=torch.device("cpu"))

        def __init__(self, shift):
            self.shift = shift

        def frozen_text_features(self):
            return None

        def __call__(self, images, text):
            nearest = (images[:, 0, 0, 0, None] - levels).abs().argmin(-1)
            return torch.nn.functional.one_hot((nearest + self.shift) % 3, 3).float()

    # batches of 3 over 7 scenes: a batch read against another batch's labels would not score 100
    assert bias_gates.accuracy(Reader(0), scenes, batch_size=3) == 100.0
    assert bias_gates.accuracy(Reader(1), scenes, batch_size=3) == 0.0
    wrong_last = LabelledScenes(images, scenes.masks, np.array([0, 2, 1, 1, 0, 2, 0]))
    assert bias_gates.accuracy(Reader(0), wrong_last, batch_size=3) == pytest.approx(600 / 7)


def test_control_repeats_draw_other_scenes_and_repeat_zero_is_the_single_pair_stream():
    from dapt_core.experiments.bias_gates import control_seed

    first = control_scenes(WORLD, "background", shots=8, seed=3, size=SIZE)
    again = control_scenes(WORLD, "background", shots=8, seed=3, size=SIZE, repeat=0)
    other = control_scenes(WORLD, "background", shots=8, seed=3, size=SIZE, repeat=1)
    assert _objects(first) == _objects(again) and first.backgrounds == again.backgrounds
    assert _objects(other) != _objects(first)  # 24 draws of 3 objects: equal by chance about once in 3**24
    assert control_seed(3, 0) == 3
    seeds = [control_seed(3, r) for r in range(1, 4)]
    assert len(set(seeds)) == 3 and 3 not in seeds and seeds == [control_seed(3, r) for r in range(1, 4)]


def test_registrations_are_data_and_v1_is_the_seed_7_settings():
    from dapt_core.experiments.gate_thresholds import DEFAULT_REGISTRATION, REGISTRATIONS, GateSettings

    assert REGISTRATIONS["v1"] == SETTINGS == GateSettings() and DEFAULT_REGISTRATION == "v1"
    assert (SETTINGS.control_repeats, SETTINGS.attention_metric, SETTINGS.cam_method) == (1, "energy_share", "gradcam")
    v2 = REGISTRATIONS["v2"]
    assert (v2.control_repeats, v2.cam_method, v2.attention_metric) == (3, "gradcam++", "energy_share")
    # v2 changes the attention gate only: every other setting is v1's
    assert replace(v2, control_repeats=1, cam_method="gradcam", attention_metric="energy_share") == SETTINGS
    assert (settings_dict(v2, THRESHOLDS)["registered"], settings_dict(v2, THRESHOLDS)["registration"]) == (True, "v2")
    assert settings_dict(SETTINGS, THRESHOLDS)["registration"] == "v1"
    assert settings_dict(replace(v2, shots=4), THRESHOLDS)["registration"] is None
    with pytest.raises(ValueError, match="attention_metric"):
        GateSettings(attention_metric="share")
    with pytest.raises(ValueError, match="control_repeats"):
        GateSettings(control_repeats=0)


def test_attention_gate_text_names_its_metric():
    rows = verdicts(_measured())  # a v1 measurement carries no metric fields: v1's words
    assert rows[-1]["threshold"] == "95% interval of balanced - background energy share above 0"
    measured = _measured()
    measured["attention"].update(metric="pointing", cam_method="relevance", control_repeats=3)
    assert verdicts(measured)[-1]["threshold"] == ("95% interval of balanced - background relevance pointing game "
                                                   "over 3 control pairs above 0")


def test_attention_is_averaged_over_control_pairs_before_the_difference(monkeypatch):
    from dapt_core.experiments import bias_gates
    from dapt_core.experiments.bias_worlds import DownstreamTask, LabelledScenes

    n = 4
    conflicting = LabelledScenes(np.zeros((n, SIZE, SIZE, 3), np.uint8), np.ones((n, SIZE, SIZE), bool),
                                 np.arange(n) % 3)
    task = DownstreamTask(WORLD.classnames, conflicting, {"test_conflicting": conflicting}, "fake")
    # balanced pair r puts share 0.1 * (r + 1) + 0.01 * scene on the object, background pair r puts 0.05 * r;
    # pointing hits: balanced 1 on even scenes, background 1 on scene 0 of pair 0 only
    monkeypatch.setattr(bias_gates, "train_coop", lambda backbone, names, scenes, seed, settings: (scenes.kind, seed))
    monkeypatch.setattr(bias_gates, "control_scenes", lambda world, kind, shots, seed, size, repeat: type(
        "S", (), {"kind": (kind, repeat)})())
    monkeypatch.setattr(bias_gates, "accuracy", lambda learner, scenes: 10.0 * (learner[0][1] + 1))

    def attention(learner, scenes, method):
        (kind, repeat), _ = learner
        assert method == "legrad"
        if kind == "balanced":
            return 0.1 * (repeat + 1) + 0.01 * np.arange(n), (np.arange(n) % 2 == 0).astype(float)
        return np.full(n, 0.05 * repeat), np.array([1.0 if repeat == 0 else 0.0, 0, 0, 0])

    monkeypatch.setattr(bias_gates, "attention_per_scene", attention)
    backbone = type("B", (), {"image_size": SIZE})()
    settings = replace(SETTINGS, control_repeats=3, cam_method="legrad", attention_metric="pointing")
    out = bias_gates.measure_attention(backbone, WORLD, task, 5, settings)
    # shares: balanced 0.2 + 0.01 * scene, background 0.05 -> difference 0.15 + 0.01 * scene, mean 0.165
    assert out["energy_share_difference"] == pytest.approx(0.165)
    assert out["balanced_energy_share"] == pytest.approx(0.215)
    assert out["background_energy_share"] == pytest.approx(0.05)
    # pointing: balanced [1, 0, 1, 0], background [1/3, 0, 0, 0] -> difference [2/3, 0, 1, 0], mean 5/12
    assert out["pointing_difference"] == pytest.approx(5 / 12, abs=1e-4)
    assert out["difference"] == out["pointing_difference"] and out["difference_ci"] == out["pointing_difference_ci"]
    assert out["balanced_accuracy_conflicting"] == pytest.approx(20.0)  # mean of 10, 20, 30
    assert (out["metric"], out["cam_method"], out["control_repeats"], out["n"]) == ("pointing", "legrad", 3, n)


def test_gates_command_names_a_v2_run_apart_and_spells_the_registration(tmp_path, capsys):
    argv = ["bench", "gates", "--backbone", "tiny-vit", "--per-class", "2", "--n-classes", "3", "--shots", "1",
            "--n-test", "2", "--epochs", "1", "--out", str(tmp_path)]
    assert main(argv + ["--registration", "v2"]) == 0
    line = _last_json(capsys.readouterr().out)
    assert line["registered"] is False and line["registration"] is None
    saved = json.loads((tmp_path / "bias_suite_gates_v2_tiny-vit_seed1.json").read_text())
    assert saved["command"].endswith("--shots 1 --n-test 2 --epochs 1 --registration v2 --n-classes 3")
    assert saved["attention"]["control_repeats"] == 3 and saved["settings"]["control_repeats"] == 3
    assert "averaged over 3 control pairs" in (tmp_path / "bias_suite_gates_v2_tiny-vit_seed1.md").read_text()
    assert main(argv) == 0  # v1, the default: the command line as v1 recorded it, no flag
    saved = json.loads((tmp_path / "bias_suite_gates_tiny-vit_seed1.json").read_text())
    assert saved["command"].endswith("--shots 1 --n-test 2 --epochs 1 --n-classes 3")
    assert saved["attention"]["control_repeats"] == 1


def test_each_registration_has_its_own_card_block():
    from dapt_core.experiments.background_shift_report import replace_marked
    from dapt_core.experiments.bias_report import CARD_MARKERS, card_markers

    assert card_markers({}) == card_markers({"registration": "v1"}) == CARD_MARKERS
    assert card_markers({"registration": None}) == CARD_MARKERS  # a run on some classes: no registration
    start, end = card_markers({"registration": "v2"})
    assert (start, end) == ("<!-- gates v2 verdict: start -->", "<!-- gates v2 verdict: end -->")
    card = f"{CARD_MARKERS[0]}\nv1 verdict\n{CARD_MARKERS[1]}\nwritten before v2\n{start}\n{end}\n"
    text = replace_marked(card, "v2 verdict", (start, end))
    assert text == f"{CARD_MARKERS[0]}\nv1 verdict\n{CARD_MARKERS[1]}\nwritten before v2\n{start}\nv2 verdict\n{end}\n"


@pytest.mark.skipif(not CARD.exists(), reason="checkpoints/synth-web.md is not written yet")
def test_model_card_states_registration_v2_as_the_code_has_it():
    from dapt_core.experiments.gate_thresholds import REGISTRATIONS

    text = CARD.read_text(encoding="utf-8")
    section = text[text.index("### Registration v2"):]
    v2 = REGISTRATIONS["v2"]
    assert (v2.cam_method, v2.attention_metric, v2.control_repeats) == ("gradcam++", "energy_share", 3)
    words = " ".join(section.replace("**", "").split())
    assert "Grad-CAM++ energy share" in words and "three control pairs" in words
    assert "--seed 11" in section and "--registration v2" in section
    assert section.index("### Registration v2") < section.index("<!-- gates v2 verdict: start -->")


def test_registration_v3_is_v2_with_the_rehomed_task_class_specific_coop_relevance_and_the_aligned_split():
    from dapt_core.experiments.gate_thresholds import REGISTRATIONS, GateSettings, registration_of, thresholds_of

    v3 = REGISTRATIONS["v3"]
    assert (v3.task, v3.class_specific, v3.learner_options()) == ("rehomed", True, {"class_specific": True})
    assert (v3.cam_method, v3.attention_metric, v3.control_repeats) == ("relevance", "energy_share", 3)
    assert replace(v3, task="home", class_specific=False, cam_method="gradcam++") == REGISTRATIONS["v2"]
    assert thresholds_of("v3") == replace(THRESHOLDS, headroom_split="test_aligned")
    assert thresholds_of("v1") == thresholds_of("v2") == THRESHOLDS
    assert registration_of(v3, thresholds_of("v3")) == "v3"
    assert registration_of(v3, THRESHOLDS) is None  # v3's settings judged on the balanced split are no registration
    assert registration_of(REGISTRATIONS["v2"], thresholds_of("v3")) is None
    assert SETTINGS.learner_options() == {}
    with pytest.raises(ValueError, match="class_specific"):
        GateSettings(learner="maple", class_specific=True)


def test_v3_headroom_is_judged_on_the_aligned_split():
    from dapt_core.experiments.gate_thresholds import thresholds_of

    # _measured: aligned 99.0 -> 99.5 (zero-shot above 80, gain 0.5), balanced 70 -> 76
    rows = {r["gate"]: r for r in verdicts(_measured(), thresholds_of("v3"))}
    assert rows["headroom_zero_shot"]["measured"] == 99.0 and rows["headroom_zero_shot"]["passed"] is False
    assert rows["headroom_coop_gain"]["measured"] == 0.5 and rows["headroom_coop_gain"]["passed"] is False
    assert "on test_aligned" in rows["headroom_coop_gain"]["threshold"]


def test_class_specific_coop_untrained_is_zero_shot(tiny_backbone):
    """The gates' zero-shot is their CoOp left untrained: with one context per class, each started from "a photo
    of a", it must give the shared context's (zero-shot CLIP's) text features."""
    import torch

    from dapt_core.experiments.bias_gates import train_coop
    from dapt_core.experiments.gate_thresholds import REGISTRATIONS

    names = ("circle", "square", "heart")
    shared = train_coop(tiny_backbone, names, None, 0, SETTINGS)
    specific = train_coop(tiny_backbone, names, None, 0, REGISTRATIONS["v3"])
    assert tuple(specific.ctx.shape[:1]) == (3,) and shared.ctx.dim() == 2
    with torch.no_grad():
        torch.testing.assert_close(specific.text_features(), shared.text_features(), rtol=0, atol=1e-6)


@pytest.mark.skipif(not CARD.exists(), reason="checkpoints/synth-web.md is not written yet")
def test_model_card_states_registration_v3_as_the_code_has_it():
    from dapt_core.experiments.gate_thresholds import REGISTRATIONS, thresholds_of

    text = CARD.read_text(encoding="utf-8")
    section = text[text.index("### Registration v3"):]
    v3 = REGISTRATIONS["v3"]
    assert (v3.cam_method, v3.task, v3.class_specific) == ("relevance", "rehomed", True)
    assert thresholds_of("v3").headroom_split == "test_aligned"
    words = " ".join(section.replace("**", "").split())
    assert "relevance map's energy share" in words and "rehomed" in words and "class-specific context" in words
    assert "Headroom is read on `test_aligned`" in words
    assert "--seed 13" in section and "--registration v3" in section
    assert section.index("### Registration v3") < section.index("<!-- gates v3 verdict: start -->")


@pytest.mark.parametrize("split, order", [
    ("test_balanced", ("test_balanced", "test_conflicting", "test_aligned")),  # v1's and v2's line, as it was
    ("test_aligned", ("test_aligned", "test_conflicting", "test_balanced")),  # v3: each split once
])
def test_card_line_names_the_headroom_split_first_and_every_split_once(split, order):
    from dapt_core.experiments.bias_report import VARIANTS, card_block

    head = {}
    for i, s in enumerate(("test_aligned", "test_balanced", "test_conflicting")):
        head.update({f"zero_shot_{s}": 10.0 + i, f"coop_{s}": 20.0 + i})
    suite = {**{v: 50.0 for v in VARIANTS}, "bg_gap": 12.0, "bg_gap_ci": [10.0, 14.0], "chance": 4.17,
             "only_bg_over_chance": 3.5}
    result = {"suite": suite, "headroom": head, "thresholds": {**vars(THRESHOLDS), "headroom_split": split},
              "registration": "v3", "seed": 13, "seconds": 1.0, "registered": True, "passed": True,
              "backbone": "b", "gates": verdicts({"suite": suite, "headroom": head})}
    line = next(l for l in card_block(result, "r.json", None).splitlines() if l.startswith("Downstream task"))
    rank = {"test_aligned": 0, "test_balanced": 1, "test_conflicting": 2}
    expected = "; ".join(f"on `{s}`: zero-shot {10.0 + rank[s]:.2f}%, CoOp {20.0 + rank[s]:.2f}%" for s in order)
    assert line == f"Downstream task {expected}."
