"""`python -m mmfusion`: the CLI (mmfusion/cli.py)."""

import sys

from mmfusion.cli import main

sys.exit(main())
