"""Feature variables that exist from the build on, switched on by their shape (TensorFlow).

A function TensorFlow traced keeps the variables and the Python objects it
captured: ``fit``'s train function, traced before a load or ``enable`` created
a feature's variables (or wrapped the schedule in a multiplier), would never
read or write them, and nothing on the optimizer's side can make Keras trace
it again (Keras 3.15 reuses ``model.train_function`` whenever it is set). The
features that a file can bring (``Feature.created_by_files``) therefore get
their variables when the optimizer is built, *dormant*: empty, shape ``(0,)``.
Switching a feature on assigns the same variable its value (a new shape), and
every step traced since the build reads and writes it from its next run.

The step tests ``size > 0`` with ``tf.cond``. The size comes from the
variable's shape, never its contents: on an accelerator the test runs on the
host, with no kernel and no device-to-host copy, so a dormant feature costs
no device work; under XLA the shape is a compile-time constant, the test
folds away, and a variable that changes shape recompiles the step. (Measured
on 2 CPU cores without XLA: about 6 microseconds of executor time per gate
and step; a schedule has two, the multiplier's and the history's, a float
rate one. With XLA, none.) The
variables synchronise on read (each replica writes its own copy, without the
cross-replica ``merge_call`` that a write inside ``tf.cond`` could not make).

JAX and torch need none of this: ``fit`` on JAX carries the variables listed
in ``optimizer.variables`` and traces again when that list changes, and torch
runs eagerly. There features create their variables on request, as before;
so they do under a ``ParameterServerStrategy`` (which Keras 3's ``fit`` does
not support): TensorFlow 2.21 aborts a worker that is sent the handle of a
variable of unknown shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

# Whether feature variables are created dormant at build (TensorFlow only).
SUPPORTED = keras.backend.backend() == "tensorflow"
# The name of every gate's ``tf.cond`` (graph inspections tell gates by it).
GATE_NAME = "introspect_opt_dormant_gate"

if SUPPORTED:  # pragma: no branch - TensorFlow is the backend CI runs first
    import tensorflow as tf


def usable() -> bool:
    """Whether the strategy in scope can hold dormant variables (see the module docstring)."""
    if not SUPPORTED:
        return False
    return not isinstance(tf.distribute.get_strategy(), tf.distribute.ParameterServerStrategy)


def make(optimizer: Any, name: str, dtype: Any, rank: int | None) -> Any:
    """An empty (dormant) variable of unknown shape; ``rank`` None: scalar once on.

    Call it eagerly, in the optimizer's strategy scope (``AppliedRateState.create``).
    """
    shape = tf.TensorShape(None if rank is None else [None] * rank)
    # Under MultiWorkerMirroredStrategy: created with one element, then emptied.
    # It broadcasts initial values, and TensorFlow 2.21 crashes (SIGSEGV)
    # broadcasting an empty one; emptying writes each copy in place. Elsewhere
    # created empty: no assignment (an update's build runs inside `apply`,
    # where Keras's own tests forbid direct variable assignments).
    multi_worker = isinstance(
        tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy
    )
    with keras.name_scope(optimizer.name, caller=optimizer):
        variable = tf.Variable(
            np.zeros((1,) if multi_worker else (0,), dtype=keras.backend.standardize_dtype(dtype)),
            shape=shape,
            trainable=False,
            name=name,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
    if multi_worker:
        switch_off(variable)
    return variable


def reshapable(variable: Any) -> bool:
    """Whether ``variable`` was made by :func:`make` (a Keras variable is not)."""
    return SUPPORTED and isinstance(variable, tf.Variable) and not variable.shape.is_fully_defined()


def is_on(variable: Any) -> bool:
    """Whether a variable made by :func:`make` holds a value (read on the host, eagerly)."""
    with tf.init_scope():
        return bool(int(tf.size(variable)) > 0)


def switch_off(variable: Any) -> None:
    """Empties a variable made by :func:`make` (eagerly)."""
    with tf.init_scope():
        variable.assign(np.zeros((0,), dtype=variable.dtype.as_numpy_dtype))


def when_on(variable: Any, on: Callable[[], Any], off: Callable[[], Any] | None = None) -> Any:
    """``on()`` if the variable holds a value when the step runs, else ``off()``.

    Both return tensors of one structure; without ``off``, ``on`` is run for
    its writes only. The test reads the variable's size, never its contents
    (see the module docstring).
    """
    switched_on = tf.greater(tf.size(variable, out_type=tf.int64), 0)
    if tf.executing_eagerly():
        if bool(switched_on):
            return on()
        return None if off is None else off()
    if off is None:

        def write() -> Any:
            on()
            return tf.constant(True)

        return tf.cond(switched_on, write, lambda: tf.constant(False), name=GATE_NAME)
    return tf.cond(switched_on, on, off, name=GATE_NAME)
