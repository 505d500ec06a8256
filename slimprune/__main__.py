"""``python -m slimprune``: the ``slimprune`` command (see :mod:`slimprune.cli`)."""

import sys

from .cli import main

sys.exit(main())
