"""``python -m mtrl.report``: see :mod:`mtrl.report`."""

import sys

from mtrl.report import main

sys.exit(main())
