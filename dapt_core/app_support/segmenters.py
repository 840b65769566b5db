"""The segmenters a visitor may pick: which can run here, why the others cannot, and what each costs."""

from __future__ import annotations

import threading

from dapt_core.segment import Segmenter, available_segmenters, get_segmenter, list_segmenters

NO_SEGMENTER = "none"
EXACT = "exact"  # not a segmenter: the object mask that comes with an example image
HELP = {NO_SEGMENTER: "no mask: predictions and CAMs only", EXACT: "the example's own exact object mask",
        "cam": "thresholded Grad-CAM, instant",
        "grabcut": "GrabCut seeded by the CAM, under a second", "sam": "Segment Anything, prompted by the CAM"}
# SAM resizes every image to this side, so its cost hardly depends on the upload
SAM_INPUT_SHAPE = (1024, 1024, 3)


class SegmenterMenu:
    """The registered segmenters plus "none" and "exact", checked once at start-up; built segmenters are shared.

    Args:
        exact_masks: whether some example images come with exact masks (else "exact" is unavailable).
    """

    def __init__(self, exact_masks: bool = False) -> None:
        self.status: dict[str, str | None] = {NO_SEGMENTER: None, **{n: None for n in list_segmenters()}}
        self.status.update(available_segmenters())
        self.status[EXACT] = None if exact_masks else "no example image here comes with an exact mask"
        self._built: dict[str, Segmenter] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Segmenter | None:
        """The segmenter ``name`` (None for "none" and "exact", which the caller handles).

        Raises:
            ValueError: an unknown name, or one that cannot run here (the reason is in the message).
        """
        if name not in self.status:
            raise ValueError(f"unknown segmenter {name!r}; choose from {', '.join(self.status)}")
        if self.status[name] is not None:
            raise ValueError(f"The {name} segmenter cannot run here: {self.status[name]}")
        if name in (NO_SEGMENTER, EXACT):
            return None
        with self._lock:
            if name not in self._built:
                self._built[name] = get_segmenter(name)
            return self._built[name]

    def choices(self) -> list[tuple[str, str]]:
        """(label, name) pairs; an unavailable one says so, SAM says what a new image costs."""
        labels = []
        for name, reason in self.status.items():
            if reason is not None:
                label = f"{name} — unavailable"
            elif name == "sam":
                seconds = self.get("sam").estimated_seconds(SAM_INPUT_SHAPE)
                label = f"sam — {HELP['sam']}, ~{seconds:.0f} s per new image"
            else:
                label = f"{name} — {HELP.get(name, '')}"
            labels.append((label, name))
        return labels

    def note(self, name: str, pixels=None) -> str:
        """One line about the choice: why it is unavailable, or what it does and (SAM) costs on ``pixels``."""
        from dapt_core.segment import pixel_hash

        if self.status.get(name) is not None:
            return f"**{name} is unavailable:** {self.status[name]}"
        if name != "sam" or pixels is None:
            return HELP.get(name, "")
        seconds = self.get("sam").estimated_seconds(pixels.shape, pixel_hash(pixels))
        cost = f"about **{seconds:.0f} s**" if seconds >= 1 else "**under a second** (seen before)"
        return f"{HELP['sam']}: {cost} for this image"
