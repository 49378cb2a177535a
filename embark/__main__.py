"""`python -m embark` is the `embark` command."""

import sys

from embark.cli import main

sys.exit(main())
