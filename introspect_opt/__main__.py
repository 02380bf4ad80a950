"""``python -m introspect_opt``: the command line (see ``introspect-opt --help``).

The ``introspect-opt`` script starts faster: it does not import this package
(and with it Keras) until a command needs it. See docs/architecture.md.
"""

import sys

from introspect_opt_cli import main

if __name__ == "__main__":
    sys.exit(main())
