"""`python -m workbench ...`: the command-line face of the same library the pages use."""

import sys

from workbench.cli import main

sys.exit(main())
