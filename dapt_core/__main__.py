import sys

from dapt_core.cli import main

sys.exit(main())
