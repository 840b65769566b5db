"""The paper's published figures, in one place, with their source; the grid's tables show them beside ours.

Only the base-to-novel averages are transcribed (from the DAPT paper's base-to-novel table, as
``../shared/METHOD.md`` of this project records them). They come from the official code, whose
background-slice fault puts seven background words among the class logits in training and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE = ("Zhang, Zhou, Yao, Zhang, Tsang, Wang: Decouple before Align: Visual Disentanglement Enhances Prompt "
          "Tuning. IEEE TPAMI 47(11), 2025; arXiv 2508.00395. Base-to-novel generalisation, ViT-B/16, "
          "average over the 11 data sets.")
CAVEAT = ("published with the official code, which counts seven background words among the class logits "
          "(see the README's official-code faults)")
PUBLISHED_DATASETS = 11  # the published averages are over CoOp's 11 data sets


@dataclass(frozen=True)
class PublishedBaseToNovel:
    method: str  # the paper's name of the method
    base: float  # accuracy on the base classes, percent
    novel: float  # accuracy on the novel classes, percent
    hm: float  # their harmonic mean, as published


BASE_TO_NOVEL_AVERAGE: dict[str, PublishedBaseToNovel] = {row.method: row for row in (
    PublishedBaseToNovel("zero-shot CLIP", 69.34, 74.22, 71.70),
    PublishedBaseToNovel("CoOp", 82.69, 63.22, 71.66),
    PublishedBaseToNovel("MaPLe", 82.28, 75.14, 78.55),
    PublishedBaseToNovel("DAPT-G", 83.13, 74.14, 78.38),
    PublishedBaseToNovel("DAPT-S", 83.95, 75.23, 79.35),
)}
