"""``python -m lakecurate ...``: the command line (same as the ``lakecurate`` script)."""

import sys

from lakecurate.cli import main

sys.exit(main())
