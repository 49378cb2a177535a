"""`python -m kfc` is the `kfc` command."""

import sys

from kfc.cli import main

sys.exit(main())
