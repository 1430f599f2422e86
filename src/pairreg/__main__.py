"""``python -m pairreg ...``: the same as the ``pairreg`` command (``bench --jobs`` starts its workers so)."""

import sys

from .cli.main import main

sys.exit(main())
