"""`python -m ted ...` is the `ted` command (also `python -m ted.cli ...`, e.g. under torchrun)."""

import sys

from .cli import main

sys.exit(main())
