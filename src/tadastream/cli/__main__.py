"""``python -m tadastream.cli``: the same command line as the ``tadastream`` script."""

import sys

from . import main

sys.exit(main())
