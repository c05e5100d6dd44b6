"""``python -m unyoke MODULE:APP``: the same as the ``unyoke`` command."""

import sys

from .cli import main

sys.exit(main())
