"""``python -m introspect_opt_cli``: the command line, as the ``introspect-opt`` script runs it."""

import sys

from introspect_opt_cli import main

if __name__ == "__main__":
    sys.exit(main())
