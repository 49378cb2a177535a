"""`python -m retina` is the `retina` command."""

import sys

from retina.cli import main

sys.exit(main())
