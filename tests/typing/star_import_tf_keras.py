"""``from introspect_opt.tf_keras import *`` under mypy --strict; checked by tests/test_typing.py.

Not run: its ``reveal_type`` lines are what the test reads.
"""

from introspect_opt.tf_keras import *  # noqa: F403

reveal_type(IntrospectableLegacyFtrl())  # noqa: F405
reveal_type(introspect)  # noqa: F405
