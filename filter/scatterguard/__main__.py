"""``python -m scatterguard``: the same as the ``scatterguard`` command."""

import sys

from scatterguard.frontends.cli import main

sys.exit(main())
