"""`python -m fintrl.cli ...`: the `fintrl` command (as `python -m fintrl`)."""

import sys

from fintrl.cli.main import main

sys.exit(main())
