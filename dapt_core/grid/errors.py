"""The grid's error, apart so that every grid module can raise it without importing the config."""


class GridConfigError(ValueError):
    """A grid config that cannot be run; the message names the key and what is wrong."""
