"""`python -m fintrl ...`: the `fintrl` command, for launchers that start modules (`accelerate launch -m fintrl run
RECIPE`, `torchrun -m fintrl run RECIPE`)."""

import sys

from fintrl.cli.main import main

sys.exit(main())
