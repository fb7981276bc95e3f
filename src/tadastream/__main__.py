"""``python -m tadastream``: the same command line as the ``tadastream`` script."""

import sys

from tadastream.cli import main

if __name__ == "__main__":
    sys.exit(main())
