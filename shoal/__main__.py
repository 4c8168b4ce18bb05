"""`python -m shoal` runs the `shoal` command."""

import sys

from shoal.cli import main

sys.exit(main())
