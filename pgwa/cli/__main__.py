"""``python -m pgwa.cli``: the same as the ``pgwa`` command."""

import sys

from pgwa.cli import main

sys.exit(main())
