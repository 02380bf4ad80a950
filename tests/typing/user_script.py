"""A small typed user script, checked with mypy --strict by tests/test_typing.py.

Not run: its ``reveal_type`` lines are what the test reads.
"""

import keras

import introspect_opt
from introspect_opt import IntrospectableAdam, IntrospectableOptimizer

opt = IntrospectableAdam(learning_rate=1e-3)
reveal_type(opt)
reveal_type(opt.current_learning_rate)
AdamW = introspect_opt.introspectable(keras.optimizers.AdamW)
reveal_type(AdamW(1e-3))
reveal_type(introspect_opt.introspect(keras.optimizers.SGD()))
reveal_type(introspect_opt.introspect(opt))


def rate(optimizer: IntrospectableOptimizer) -> float:
    return float(optimizer.current_learning_rate)


rate(opt)
rate(AdamW(1e-3))
opt.current_learning_rate = 3  # the one expected error: a read-only property
