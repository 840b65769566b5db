"""Sub-commands (being written)."""


def add_commands(sub) -> None:
    """Adds this module's sub-commands to the ``python -m dapt_core`` parser."""
