"""``python -m tadastream.server``: the same as ``tadastream serve``."""

import sys

from . import main

sys.exit(main())
