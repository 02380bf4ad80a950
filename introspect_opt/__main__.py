"""``python -m introspect_opt``: the command line (see ``introspect-opt --help``)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
