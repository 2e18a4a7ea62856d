"""``python -m containers_image_proxy``: the command line tool (see docs/cli.md)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
