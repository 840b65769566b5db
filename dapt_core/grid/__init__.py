"""The paper's experiments at scale: a grid of training runs from one YAML config, run on Ray.

- :mod:`~dapt_core.grid.config`: the config (and the shipped presets of the paper's three settings);
- :mod:`~dapt_core.grid.methods`: the methods a grid compares (CoOp, MaPLe, each with DAPT-G or DAPT-S);
- :mod:`~dapt_core.grid.cells`: one cell per run, its folder, what marks it finished;
- :mod:`~dapt_core.grid.trial`: one cell, through the library;
- :mod:`~dapt_core.grid.engine`: Ray tasks with retries, or a sequential mode;
- :mod:`~dapt_core.grid.masks`: DAPT-S masks, one job per data set, on the same engine;
- :mod:`~dapt_core.grid.runner`: a whole grid, end to end;
- :mod:`~dapt_core.grid.aggregate`, :mod:`~dapt_core.grid.plots`, :mod:`~dapt_core.grid.published`: the
  tables, the figure and the published figures beside ours;
- :mod:`~dapt_core.grid.calibrate`: the dry run's count and time estimate.
"""
