"""``from introspect_opt import *`` under mypy --strict; checked by tests/test_typing.py.

Not run: its ``reveal_type`` lines are what the test reads.
"""

from introspect_opt import *  # noqa: F403

reveal_type(IntrospectableScheduleFreeAdamW())  # noqa: F405
reveal_type(introspect)  # noqa: F405
