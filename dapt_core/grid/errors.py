"""The grid's error, apart so that every grid module can raise it without importing the config."""

from dapt_core.errors import DaptError


class GridConfigError(DaptError):
    """A grid config that cannot be run; the message names the key and what is wrong."""
