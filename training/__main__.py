"""``python -m training``: the same command line as ``gan-train``."""

import sys

from training.cli import main

sys.exit(main())
