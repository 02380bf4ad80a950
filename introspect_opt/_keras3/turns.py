"""Each variable's own turn in an update watched variable by variable.

While a feature watches variables (``Feature.watches_variables``), the mixin
applies the update one variable at a time: Keras's own decoupled weight decay
and its own update step, each given that one variable (see
:func:`update_one_variable_at_a_time`). The features look at the variable
before its turn and get, after it, the *change* the turn made to it.

Where the change comes from, without a copy of the variable: Keras's update
steps change a variable only through the optimizer's ``assign``,
``assign_add`` and ``assign_sub`` (Keras's own rule for optimizers, "to
support backend specific optimizations", checked by Keras's own sparse tests
and by our canary). The mixin hands those calls to :func:`observe` first, so
the turn sees the very value the update step adds or subtracts: its change,
already computed by the optimizer, costs one reduction and no buffer.

Where it does not (the change is then the variable after its turn minus a
copy taken before it, one variable at a time):

* decoupled weight decay applies to the variable (Keras assigns the decay
  directly, not through those methods);
* the variable is not float32 or float64: a float16 or bfloat16 weight may
  round a small change away, and the change the update *made* is what counts;
* more than one replica updates it (a ``tf.distribute`` strategy applies the
  change per device, in cross-replica context);
* the torch backend (its fused update steps write through ``torch._foreach``);
* an update step that is not Keras's own (``compat.update_step_is_keras_own``:
  a user's may write the variable directly, or change a value it assigned).

For float32 weights the assigned change is the step the optimizer computed;
the step the weights took differs from it by float32 rounding (all of it
where a step is below the weights' spacing and rounds away).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from introspect_opt._keras3 import compat as _keras_private

# Where the optimizer keeps the turn in progress (only while one runs).
_TURN = "_introspect_turn"
_FLOATS_THE_ASSIGNMENT_KEEPS = ("float32", "float64")


@dataclasses.dataclass
class _Turn:
    """One variable's turn: what its update step assigned to it."""

    variable: Any
    key: Any  # Keras's own key for it (_var_key)
    watch_assignments: bool
    # (sign, value): the change is the sum of sign * value.
    parts: list[tuple[int, Any]] = dataclasses.field(default_factory=list)


def observe(optimizer: Any, variable: Any, value: Any, kind: str) -> None:
    """Called by the mixin's ``assign``/``assign_add``/``assign_sub`` before Keras's.

    Records the change it is about to make when ``variable`` is the one whose
    turn runs; any other variable (a slot, another optimizer's) is left alone.
    """
    turn: _Turn | None = optimizer.__dict__.get(_TURN)
    if turn is None or not turn.watch_assignments:
        return
    same = variable is turn.variable
    if not same and _keras_private.variable_key(optimizer, variable) != turn.key:
        return
    if _is_variable(value):  # SGD adds its momentum variable: its value now
        value = _read(value)
    if kind == "assign_add":
        turn.parts.append((1, value))
    elif kind == "assign_sub":
        turn.parts.append((-1, value))
    else:  # the new value minus the current one, read now (before Keras assigns)
        current = _read(turn.variable)  # (TensorFlow hands update steps the tf.Variable)
        if _is_sparse(value):  # rows to set: the value they will have
            import tensorflow as tf

            value = tf.tensor_scatter_nd_update(current, value.indices[:, None], value.values)
        turn.parts.append((1, ops.subtract(ops.cast(value, current.dtype), current)))


def _is_variable(value: Any) -> bool:
    return isinstance(value, keras.Variable) or (
        keras.backend.backend() == "tensorflow" and hasattr(value, "read_value")
    )


def _is_sparse(value: Any) -> bool:
    return type(value).__name__ == "IndexedSlices"


def _sees_assignments(optimizer: Any, variable: Any, decays: bool) -> bool:
    """Whether the turn's change can come from the optimizer's assignments (module doc)."""
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax") or decays:
        return False
    if keras.backend.standardize_dtype(variable.dtype) not in _FLOATS_THE_ASSIGNMENT_KEEPS:
        return False
    if backend == "tensorflow":
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        strategy = tf.distribute.get_strategy() if context is None else context.strategy
        if strategy.num_replicas_in_sync != 1:
            return False
    return True


def _value_before(variable: Any, assigned: bool) -> Any:
    """The variable's value before its turn, for when its change is not assigned.

    None where the change will come from the assignments (``assigned``): a
    value held across an in-place update costs a copy on TensorFlow and torch.
    """
    backend = keras.backend.backend()
    if assigned:
        return None
    if backend == "jax":
        return variable.value  # immutable
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.identity(variable.value)  # a read now (a variable reads where used)
    return ops.copy(variable.value)


def _change(turn: _Turn, variable: Any, before: Any) -> Any:
    """The change the turn made to the variable (dense, or sparse rows to add)."""
    if turn.watch_assignments and turn.parts:
        if len(turn.parts) == 1:
            return turn.parts[0][1]  # its sign does not change a norm
        total = None
        for sign, part in turn.parts:
            # (A sparse part among several: no Keras update step makes one.)
            dense = _dense(part) if _is_sparse(part) else part
            dense = dense if sign > 0 else ops.negative(dense)
            total = dense if total is None else ops.add(total, dense)
        return total
    if before is None:  # pragma: no cover - the canary of ASSIGNMENT_HOOKS pins this
        raise RuntimeError(
            f"Keras's update step changed {variable.path!r} without the optimizer's "
            "assign/assign_add/assign_sub, so introspect_opt diagnostics cannot see the "
            "change; please report this with your Keras version."
        )
    return ops.subtract(_read(variable), before)


def _read(variable: Any) -> Any:
    """A variable's value now (on TensorFlow, a read at this point of the program)."""
    value = variable.value if isinstance(variable, keras.Variable) else variable
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.identity(value)
    return value


def _dense(slices: Any) -> Any:  # pragma: no cover - see _change
    import tensorflow as tf

    return tf.convert_to_tensor(slices)


def update_one_variable_at_a_time(
    optimizer: Any,
    grads: list[Any],
    variables: list[Any],
    learning_rate: Any,
    decay: Callable[[list[Any]], None] | None,
    update: Callable[[list[Any], list[Any], Any], None],
    before_variable: Callable[[Any, Any], Any],
    after_variable: Callable[[Any, Any, Any, Any], Any],
    own_scalars: list[Any],
    keras_update_step: bool,
) -> None:
    """The update, applied variable by variable, for features that watch each one.

    For each variable: ``before_variable(gradient, variable)`` (the features'
    look before), its decoupled weight decay and its update step (Keras's own
    methods, given that one variable; ``decay`` None where the decay is not
    deferred into the turns), then ``after_variable(gradient,
    variable, before, change)`` with ``change`` the change the turn made.
    Each variable's update depends on its own gradient, value and slots only,
    so the result is bit-identical to the whole update at once; an
    optimizer's own scalars that its update step advances once per call
    (Nadam's ``u_product``, in ``own_scalars``) are put back before every
    call after the first, so that each call sees, and the last one leaves,
    what the single call would. ``keras_update_step``: the update step is
    Keras's own and reaches the mixin's assignment methods, so that a copy
    before the turn is needed only where the assignments cannot give its
    change (module doc).

    Ordering (``_sequenced``): each variable's update waits for the features'
    look before it, so that a read of the variable is released before it is
    updated (in place, no copy). A turn waits for the previous turn's
    observations (:func:`_waits_for_the_previous_turn`) so that at most one
    variable's copy or temporaries live at a time.
    """
    own_before = [ops.copy(v.value) for v in own_scalars]
    previous: list[Any] = []
    for index, (grad, variable) in enumerate(zip(grads, variables, strict=True)):
        decays = decay is not None and _keras_private.decays(optimizer, variable)
        turn = _Turn(
            variable,
            _keras_private.variable_key(optimizer, variable),
            keras_update_step and _sees_assignments(optimizer, variable, decays),
        )
        if _waits_for_the_previous_turn(turn):
            grad = _sequenced(previous, grad)
        looked = before_variable(grad, variable)
        before = _value_before(variable, turn.watch_assignments)
        step_grad = _sequenced(looked, grad)
        if decay is not None and decays:  # torch refuses an empty list
            decay([variable])
        if index:
            for scalar, value in zip(own_scalars, own_before, strict=True):
                scalar.assign(value)
        optimizer.__dict__[_TURN] = turn
        try:
            update([step_grad], [variable], learning_rate)
        finally:
            optimizer.__dict__.pop(_TURN, None)
        seen = after_variable(grad, variable, looked, _change(turn, variable, before))
        previous = seen


def _waits_for_the_previous_turn(turn: _Turn) -> bool:
    """Whether a turn starts only once the previous turn's observations exist.

    On JAX, always: XLA then keeps one variable's temporaries at a time (+2 MB
    in the 29M-parameter benchmark's compiled step, against +64 MB without,
    and 1.18x the step time against 1.32x). On TensorFlow, only a turn that
    holds a copy: the executor runs the other turns as their gradients
    arrive, as plain Keras does, so that the update of the last layers
    overlaps the backward pass of the first ones (1.03-1.05x the step time
    without the wait, 1.11-1.15x with it, at batch 32).
    """
    return keras.backend.backend() != "tensorflow" or not turn.watch_assignments


def _sequenced(previous: list[Any], value: Any) -> Any:
    """``value``, made to wait for ``previous`` (traced TensorFlow and JAX; else as is)."""
    previous = [p for p in keras.tree.flatten(previous) if p is not None]
    if not previous or value is None:
        return value
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.executing_eagerly():
            return value
        with tf.control_dependencies(previous):
            if isinstance(value, tf.IndexedSlices):
                return tf.IndexedSlices(tf.identity(value.values), value.indices, value.dense_shape)
            return tf.identity(value)
    if backend == "jax" and _keras_private.is_traced(value):
        import jax

        return jax.lax.optimization_barrier((previous, value))[1]  # type: ignore[no-untyped-call]
    return value
