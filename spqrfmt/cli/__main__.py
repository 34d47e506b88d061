"""``python -m spqrfmt.cli`` (and ``torchrun -m spqrfmt.cli``): the ``spqr`` command."""

import sys

from . import main

sys.exit(main())
