"""DAPT ("Decouple before Align") prompt tuning and attention analysis on open_clip."""

__version__ = "0.1.0"
