"""``python -m dapt_core``: the command line of :mod:`dapt_core.cli`."""

import sys

from dapt_core.cli import main

sys.exit(main())
