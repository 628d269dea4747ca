"""``python -m cbgrid`` runs the ``cbgrid`` command."""

import sys

from cbgrid.cli import main

sys.exit(main())
