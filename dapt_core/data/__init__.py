"""Data for prompt tuning, one module per concept.

- :mod:`~dapt_core.data.records`: ``Sample``, ``DatasetSplits``, ``DataError`` and image listing;
- :mod:`~dapt_core.data.folders`: image folders, data specs, few-shot draws, base/novel classes, class lists;
- :mod:`~dapt_core.data.coop`: the 11 benchmark data sets in CoOp's layout;
- :mod:`~dapt_core.data.masks`: foreground masks from folders, memory or a content-hash cache;
- :mod:`~dapt_core.data.dataset`: the mask-aware training/evaluation ``Dataset``.
"""
