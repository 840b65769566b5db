"""DAPT's background vocabulary: the named presets and word files, defined here and nowhere else.

The official code (Ferenas/DAPT ``trainers/maple.py``) appends the same 32 background prompts on every data
set: its 25 general words, then 7 words for food scenes. It then slices the background features with the
length of the first list (25 rows from the end), so its background loss only ever sees the LAST 25 of the 32
words, while the first seven (ground ... sky) fall among the class logits. This project keeps background
prompts out of the class logits and uses all 32 by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

# The official lists, in the official order: BACKGROUND_CATEGORY, then BACKGROUND_CATEGORY_FOOD.
OFFICIAL_GENERAL_WORDS: tuple[str, ...] = (
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea", "railway",
    "railroad", "keyboard", "helmet", "cloud", "house", "mountain", "ocean", "road", "rock", "street",
    "valley", "bridge", "sign",
)
OFFICIAL_FOOD_WORDS: tuple[str, ...] = ("table", "forks", "tablecloth", "hands", "spoon", "glasses", "dishes")
OFFICIAL_BACKGROUNDS: tuple[str, ...] = OFFICIAL_GENERAL_WORDS + OFFICIAL_FOOD_WORDS  # all 32, every data set
# The official code's own general-purpose list (its BACKGROUND_CATEGORY), without the food-scene words.
GENERIC_BACKGROUNDS: tuple[str, ...] = OFFICIAL_GENERAL_WORDS

VOCABULARIES: dict[str, tuple[str, ...]] = {
    "official": OFFICIAL_BACKGROUNDS,  # the 32 words the official code appends (the default)
    "generic": GENERIC_BACKGROUNDS,  # the official 25 general words (no food-scene words)
}
MIN_WORDS = 2  # a pseudo-label over one word makes the background loss identically zero


def check_background_words(words: Iterable[str]) -> tuple[str, ...]:
    """Validates a vocabulary: at least two distinct, non-empty words (surrounding spaces stripped).

    Raises:
        ValueError: naming the fault.
    """
    if isinstance(words, str):
        raise ValueError(f"background words must be a list of words, not the string {words!r}")
    cleaned = tuple(" ".join(str(w).split()) for w in words)
    if len(cleaned) < MIN_WORDS:
        raise ValueError(f"the background vocabulary needs at least {MIN_WORDS} words, got {len(cleaned)}")
    if any(not w for w in cleaned):
        raise ValueError("the background vocabulary holds an empty word")
    dupes = sorted({w for w in cleaned if cleaned.count(w) > 1})
    if dupes:
        raise ValueError(f"the background vocabulary repeats {', '.join(dupes)}")
    return cleaned


def read_background_words(path: str | Path) -> tuple[str, ...]:
    """Words from a UTF-8 text file, one per line; blank lines and lines starting with ``#`` are skipped."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"background words file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"background words file {path} is not UTF-8 text ({err})") from err
    words = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    try:
        return check_background_words(words)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def resolve_background_words(spec: str) -> tuple[str, ...]:
    """A preset name (``official``, ``generic``) or the path of a words file, as ``--background-words`` takes."""
    if spec in VOCABULARIES:
        return VOCABULARIES[spec]
    if not Path(spec).is_file():
        raise ValueError(f"--background-words {spec!r} is neither a preset ({', '.join(VOCABULARIES)}) "
                         "nor an existing words file")
    return read_background_words(spec)


def vocabulary_name(words: Iterable[str]) -> str | None:
    """The preset a vocabulary equals, or None for a custom one (recorded in metadata)."""
    words = tuple(words)
    return next((name for name, preset in VOCABULARIES.items() if preset == words), None)
