"""The schema of a prompt set's metadata, checked on every read before any of it is used.

A prompt set stores its metadata as one JSON object (:mod:`dapt_core.checkpoint`). A file edited by hand or
written by another tool may hold any JSON there: a list, ``"format_version": "1"``, ``"learner_options":
null``, ``"classnames": "dog"`` (which would become the three classes d, o, g). :func:`metadata_problems`
names every field that does not fit, so a reader refuses the file with a message instead of failing
somewhere later.

The schema is written out here rather than in JSON Schema: it is a dozen fields, the learner's options are
checked against the learner's own config dataclass (a rule JSON Schema cannot state without repeating every
config), and the messages name the field in the words of this project.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from dapt_core.constants import DAPT_RECORD_DEFAULTS

MIN_CLASSES = 2  # a prompt set tells at least two classes apart


@dataclass(frozen=True)
class Field:
    """One top-level field of the metadata."""

    types: tuple[type, ...]  # the JSON types it may hold (type(None) for null)
    required: bool  # must be present
    what: str  # shown in messages: what the field holds


_STR, _INT, _DICT, _NONE = (str,), (int,), (dict,), (type(None),)
SCHEMA: dict[str, Field] = {
    "format": Field(_STR, True, "the file format's name"),
    "format_version": Field(_INT, False, "the file format's version, an integer"),
    "name": Field(_STR + _NONE, False, "the prompt set's name"),
    "learner": Field(_STR, True, "the prompt learner's kind"),
    "learner_options": Field(_DICT, True, "the learner's options, an object"),
    "dapt": Field(_DICT + _NONE, False, "the DAPT settings it was trained with, an object or null"),
    "backbone": Field(_STR, True, "the backbone's registry name"),
    "model": Field(_STR, True, "the open_clip model config"),
    "pretrained": Field(_STR + _NONE, False, "the backbone's weight tag, or null for random weights"),
    "text_width": Field(_INT, False, "the text encoder's width, an integer"),
    "vision_width": Field(_INT, False, "the image encoder's width, an integer"),
    "classnames": Field((list,), True, "the class names, a list of strings"),
    "train": Field(_DICT, False, "the training settings, an object"),
    "metrics": Field(_DICT, False, "the evaluation results, an object"),
    "created": Field(_STR, False, "when it was written, a string"),
}
_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "an object",
               list: "a list", type(None): "null"}


def _json_type(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def _fits(value: Any, allowed: tuple[type, ...]) -> bool:
    """True when ``value`` is of one of the JSON types ``allowed`` (a bool is no integer; an int is a float)."""
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, int) and float in allowed:
        return True
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return any(type(value) is t for t in allowed)


def _option_types(config_cls: type) -> dict[str, tuple[type, ...]]:
    """The JSON types each field of a learner's config dataclass takes (``str | None`` -> (str, NoneType))."""
    hints = typing.get_type_hints(config_cls)
    out = {}
    for f in dataclasses.fields(config_cls):
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
            else (hint,)
        out[f.name] = tuple(args)
    return out


def _classname_problems(names: list) -> list[str]:
    bad = [i for i, n in enumerate(names) if not isinstance(n, str) or not n.strip()]
    if bad:
        return [f"classnames[{bad[0]}] is {_json_type(names[bad[0]])} {names[bad[0]]!r}; every class name must "
                "be a non-empty string"]
    if len(names) < MIN_CLASSES:
        return [f"classnames holds {len(names)} name(s); a prompt set needs at least {MIN_CLASSES}"]
    return []


def _learner_problems(meta: dict) -> list[str]:
    from dapt_core.learners import LEARNERS  # the learners' configs: imported when a file is read

    kind = meta["learner"]
    if kind not in LEARNERS:
        return [f"learner is {kind!r}, not one of {', '.join(LEARNERS)}"]
    allowed = _option_types(LEARNERS[kind][1])
    problems = []
    for key, value in meta["learner_options"].items():
        if key not in allowed:
            problems.append(f"learner_options.{key} is no option of {kind} (options: {', '.join(allowed)})")
        elif not _fits(value, allowed[key]):
            wanted = " or ".join(_JSON_NAMES.get(t, t.__name__) for t in allowed[key])
            problems.append(f"learner_options.{key} is {_json_type(value)} {value!r}; it must be {wanted}")
    return problems


def metadata_problems(meta: Any) -> list[str]:
    """Every way ``meta`` (parsed JSON) departs from :data:`SCHEMA`, each naming its field; empty when it fits.

    Checks the type of every known field, that the required ones are there, that ``classnames`` is a list of
    at least two non-empty strings, that ``learner`` is a known learner and each of ``learner_options`` is
    an option of its config of the right type, and that ``dapt.cue`` and ``dapt.cam_method`` (when given)
    are strings. Unknown top-level fields are allowed (newer writers may add some).
    """
    if not isinstance(meta, dict):
        return [f"the metadata is {_json_type(meta)}, not an object of named fields"]
    problems = []
    for key, field in SCHEMA.items():
        if key not in meta:
            if field.required:
                problems.append(f"field {key!r} ({field.what}) is missing")
        elif not _fits(meta[key], field.types):
            problems.append(f"field {key!r} is {_json_type(meta[key])} {_short(meta[key])}; it must be "
                            f"{field.what}")
    if problems:
        return problems
    problems += _classname_problems(meta["classnames"])
    problems += _learner_problems(meta)
    for key, default in (("cue", "off"), *DAPT_RECORD_DEFAULTS.items()):
        value = (meta.get("dapt") or {}).get(key, default)
        if not isinstance(value, str):
            problems.append(f"dapt.{key} is {_json_type(value)} {_short(value)}; it must be a string")
    return problems


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
