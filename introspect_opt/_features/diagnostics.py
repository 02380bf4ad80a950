"""Opt-in feature: per-update diagnostics, kept on the device like the applied rate.

With diagnostics on, every applied update also writes three float32 scalars:

* ``gradient_norm``: the global L2 norm of the gradients the update applied
  (after accumulation, unscaling and clipping; under a ``tf.distribute``
  strategy, of the gradients summed over replicas; for a sparse gradient, with
  the rows that share an index summed, as the update adds them);
* ``update_norm``: the global L2 norm of the change the update made to the
  trainable variables, decoupled weight decay included;
* ``update_to_weight_ratio``: ``update_norm`` divided by the global norm of the
  variables before the update (``inf`` or ``nan`` when those are all zero).

With ``per_variable=True`` it also keeps, for each variable the optimizer was
built for, the gradient, update and weight norms of that variable (one float32
row of three per variable, rows in the order the optimizer was built for its
variables, as the manifest records them).

No copy of the model: the feature watches each variable's own update
(``Feature.watches_variables``), so that the optimizer applies the update one
variable at a time and hands the feature the change each variable's turn
made (``_keras3.turns``: the value Keras's update step assigns, or where
that cannot tell, the variable after minus a copy of that one variable
before). What it keeps between variables is three sums of squares per
variable; the global values are derived from them.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, overload

import keras
import numpy as np
from keras import ops

from introspect_opt._common.names import STATE_ATTRIBUTE
from introspect_opt._keras3 import compat as _keras_private
from introspect_opt._keras3.features import Entries, Feature, Update, register_feature
from introspect_opt._keras3.host import host_array
from introspect_opt._keras3.resolve import (
    optimizer_of,
    resolve_multi_optimizer,
    resolve_optimizer,
    unwrap,
)
from introspect_opt._keras3.state import AppliedRateState, make_variable

KEYS = ("gradient_norm", "update_norm", "update_to_weight_ratio")
PER_VARIABLE_KEY = "per_variable_norms"
# The columns of PER_VARIABLE_KEY, and the keys a per-variable read derives from them.
NORMS = ("gradient_norm", "update_norm", "weight_norm")
PER_VARIABLE_KEYS = (*NORMS, "update_to_weight_ratio", "effective_learning_rate")


def _values(tensor: Any, variable: Any = None) -> Any:
    if isinstance(tensor, keras.Variable):
        # Inside jax.jit a Keras variable must be read explicitly.
        tensor = tensor.value
    elif type(tensor).__name__ == "IndexedSlices":
        tensor = _rows_as_applied(tensor, variable)
    return ops.cast(tensor, "float32")


def _rows_as_applied(gradient: Any, variable: Any = None) -> Any:
    """A sparse gradient's (or change's) rows with the rows that share an index summed.

    TensorFlow's sparse gradients (embeddings) hold one row per lookup, so an
    id seen twice in a batch has two rows; the update adds both to the same
    row of the variable (``scatter_add``), so the gradient it applied has
    their sum there. The result has as many rows as ``gradient.values`` (the
    extra ones zero): static shapes, so it works under XLA too, and it costs
    one more buffer the size of the rows, never of the variable. Where the
    number of rows is not known while tracing (the sparse change Adagrad
    and Adadelta assign comes out of a ``tf.cond``), XLA needs it to be: the
    rows are then added into the ``variable``'s shape (a buffer its size).
    """
    import tensorflow as tf

    indices = gradient.indices
    if indices.shape[0] is None and variable is not None and variable.shape[0] is not None:
        return tf.math.unsorted_segment_sum(gradient.values, indices, variable.shape[0])
    order = tf.argsort(indices, stable=True)
    ordered = tf.gather(indices, order)
    starts = tf.concat([[True], tf.not_equal(ordered[1:], ordered[:-1])], axis=0)
    group = tf.cumsum(tf.cast(starts, indices.dtype)) - 1
    segments = tf.scatter_nd(order[:, None], group, tf.shape(indices, out_type=order.dtype))
    return tf.math.unsorted_segment_sum(gradient.values, segments, tf.size(indices))


def _sum_of_squares(tensor: Any) -> Any:
    """The sum of the squares of ``tensor``'s elements, in one pass where the backend allows."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # One kernel, one read (square then sum is three passes without XLA);
        # l2_loss halves exactly (a power of two), so doubling gives the sum back.
        return ops.multiply(tf.nn.l2_loss(tensor), 2.0)
    return ops.sum(ops.square(tensor))


def _summed_over_replicas(gradient: Any) -> Any:
    """The gradient summed over replicas, under a multi-replica tf.distribute step.

    Keras sums it inside its update step, out of reach; this costs one more
    all-reduce of the gradient (only with diagnostics on).
    """
    if keras.backend.backend() != "tensorflow":
        return gradient
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return gradient
    return context.all_reduce(tf.distribute.ReduceOp.SUM, gradient)


class _Diagnostics(Feature):
    name = "diagnostics"
    keys = KEYS

    def create(self, optimizer: Any, state: AppliedRateState, **options: Any) -> None:
        for key in reversed(KEYS):  # the feature exists once its first key is set
            setattr(state, key, make_variable(optimizer, key, np.full((), np.nan, "float32")))

    def watches_variables(self, optimizer: Any, state: AppliedRateState) -> bool:
        return True

    def before_variable(
        self, optimizer: Any, state: AppliedRateState, gradient: Any, variable: Any
    ) -> Any:
        # Before its weight decay and update: the gradient it applies, and the weights.
        applied = _values(_summed_over_replicas(gradient), variable)
        return ops.stack([_sum_of_squares(applied), _sum_of_squares(_values(variable))])

    def after_variable(
        self,
        optimizer: Any,
        state: AppliedRateState,
        gradient: Any,
        variable: Any,
        rate: Any,
        before: Any,
        change: Any,
    ) -> Any:
        squares = ops.unstack(before, 2)
        return ops.stack([squares[0], _sum_of_squares(_values(change, variable)), squares[1]])

    def after_update(self, optimizer: Any, state: AppliedRateState, update: Update) -> None:
        seen = update.observed.get(self.name)
        if seen is None or len(seen) != len(update.variables):
            raise RuntimeError(  # pragma: no cover - a Keras change would land here
                "introspect_opt diagnostics did not see each variable's update; please "
                "report this with your Keras version."
            )
        squares = ops.stack(seen) if seen else ops.zeros((0, 3), "float32")
        gradient, change, weights = (ops.sqrt(t) for t in ops.unstack(ops.sum(squares, 0), 3))
        state.gradient_norm.assign(gradient)
        state.update_norm.assign(change)
        state.update_to_weight_ratio.assign(ops.divide(change, weights))
        if state.has(PER_VARIABLE.name):
            PER_VARIABLE.write(optimizer, state, update.variables, seen)

    def assign(
        self,
        optimizer: Any,
        state: AppliedRateState,
        entries: Entries | None,
        owners: dict[int, int] | None = None,
    ) -> None:
        for key in KEYS:
            getattr(state, key).assign(np.nan if entries is None else entries[key])


class _PerVariable(Feature):
    """Per-variable norms: one row per variable the optimizer was built for.

    Switched on together with diagnostics (``record_diagnostics(...,
    per_variable=True)``); the diagnostics feature writes it.
    """

    name = "per_variable_diagnostics"
    keys = (PER_VARIABLE_KEY,)
    # Entries with one row per model variable the file's manifest records.
    rows_per_model_variable = (PER_VARIABLE_KEY,)

    def create(self, optimizer: Any, state: AppliedRateState, **options: Any) -> None:
        count = len(_keras_private.variables_built_for(optimizer))
        initial = np.full((count, len(NORMS)), np.nan, "float32")
        setattr(state, PER_VARIABLE_KEY, make_variable(optimizer, PER_VARIABLE_KEY, initial))

    def write(
        self, optimizer: Any, state: AppliedRateState, variables: list[Any], seen: list[Any]
    ) -> None:
        """Writes this update's rows (``nan`` for variables it did not update)."""
        missing = ops.full((len(NORMS),), np.nan, "float32")
        rows = [missing] * len(_keras_private.variables_built_for(optimizer))
        for variable, squares in zip(variables, seen, strict=True):
            rows[_keras_private.variable_index(optimizer, variable)] = ops.sqrt(squares)
        table = ops.stack(rows) if rows else ops.zeros((0, len(NORMS)), "float32")
        getattr(state, PER_VARIABLE_KEY).assign(table)

    def check(self, entries: Entries) -> str | None:
        value = entries[PER_VARIABLE_KEY]
        if value.ndim != 2 or value.shape[1] != len(NORMS) or value.dtype.kind != "f":
            return (
                f"{PER_VARIABLE_KEY!r} holds {value.dtype} of shape {value.shape}, not "
                f"floats of shape (variables, {len(NORMS)})"
            )
        return None

    def assign(
        self,
        optimizer: Any,
        state: AppliedRateState,
        entries: Entries | None,
        owners: dict[int, int] | None = None,
    ) -> None:
        variable = getattr(state, PER_VARIABLE_KEY)
        table = np.full(tuple(variable.shape), np.nan, "float32")
        if entries is not None and owners is not None:
            for recorded, here in owners.items():
                table[here] = entries[PER_VARIABLE_KEY][recorded]
        variable.assign(table)


DIAGNOSTICS = register_feature(_Diagnostics())
PER_VARIABLE = _PerVariable()
register_feature(PER_VARIABLE)


def enable(optimizer: Any, per_variable: bool = False) -> bool:
    """Switches diagnostics on (and per-variable ones too); whether that created variables.

    A function traced before does not update variables created now: the
    caller has it traced again (see ``record_diagnostics``).
    """
    state = optimizer._ensure_introspection_state()
    created = bool(state.enable(optimizer, DIAGNOSTICS.name))
    if per_variable:
        created = bool(state.enable(optimizer, PER_VARIABLE.name)) or created
    return created


def read(optimizer: Any) -> dict[str, float]:
    """The last update's diagnostics as floats; NaN where none was recorded.

    NaN too when the values do not belong to the update the step counter says
    was last (restored from a file without them). Empty without diagnostics.
    """
    state = optimizer.__dict__.get(STATE_ATTRIBUTE)
    if state is None or not state.has(DIAGNOSTICS.name):
        return {}
    fresh = state.is_current(optimizer)
    return {key: float(host_array(getattr(state, key))) if fresh else np.nan for key in KEYS}


def variable_keys(optimizer: Any) -> list[str]:
    """The keys of the per-variable read: each variable's path, numbered when shared.

    A path that several variables share (two sub-models with a layer of the
    same name) gets ``#2``, ``#3`` ... after its first, in the order the
    optimizer was built for them.
    """
    keys: list[str] = []
    seen: dict[str, int] = {}
    for variable in _keras_private.variables_built_for(optimizer):
        path = str(variable.path)
        seen[path] = seen.get(path, 0) + 1
        keys.append(path if seen[path] == 1 else f"{path}#{seen[path]}")
    return keys


def read_per_variable(optimizer: Any) -> dict[str, dict[str, float]]:
    """``{path: {key: float}}`` for the last update; empty without per-variable diagnostics."""
    state = optimizer.__dict__.get(STATE_ATTRIBUTE)
    if state is None or not state.has(PER_VARIABLE.name):
        return {}
    table = np.array(host_array(getattr(state, PER_VARIABLE_KEY)), dtype=np.float32)
    if not state.is_current(optimizer):
        table[:] = np.nan
    gradient, change, weights = table[:, 0], table[:, 1], table[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = change / weights
        effective = np.where(gradient == 0, np.float32(np.nan), change / gradient)
    columns = (gradient, change, weights, ratio, effective)
    return {
        key: {
            name: float(column[row])
            for name, column in zip(PER_VARIABLE_KEYS, columns, strict=True)
        }
        for row, key in enumerate(variable_keys(optimizer))
    }


def _check_switch(value: Any, caller: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"{caller}: `per_variable` must be True or False, got {value!r} "
            f"({type(value).__name__})."
        )
    return bool(value)


def record_diagnostics(optimizer: Any, per_variable: bool = False) -> Any:
    """Records, on every applied update, its gradient norm and update size.

    Every update then also writes, on the device (no host round-trip):
    ``gradient_norm`` (global L2 norm of the gradients the update applied:
    after accumulation, unscaling and clipping, summed over replicas under a
    ``tf.distribute`` strategy), ``update_norm`` (global L2 norm of the change
    to the trainable variables, decoupled weight decay included) and
    ``update_to_weight_ratio`` (``update_norm`` over the norm of the variables
    before the update). With ``per_variable=True`` it keeps the same norms for
    each variable too (read them with
    ``last_update_diagnostics(obj, per_variable=True)``).

    The optimizer then applies each update one variable at a time (decay,
    then update step, as Keras does) and reads each variable's change where
    Keras's update step assigns it: three reductions per variable, no copy
    of the model, three scalars per variable kept. Where the assignment
    cannot give the change (decoupled weight decay on that variable, float16
    or bfloat16 weights, several replicas, torch, a custom update step), it
    holds a copy of that one variable during its turn. See docs/logging.md,
    "The cost", for what was measured. Weight updates stay bit-identical.
    Under a multi-replica ``tf.distribute`` strategy it costs one more
    all-reduce of each gradient. ``LearningRateLogger(diagnostics=True)``
    (or ``diagnostics="per_variable"``) calls this for you.

    On TensorFlow, a function that traced the update step before (``fit``'s
    train function, say) does not record them until it is traced again: pass
    the compiled model, and its train function is traced again at the next
    ``fit``; given only the optimizer, a warning says so.

    Args:
        optimizer: An introspectable optimizer (or a ``LossScaleOptimizer``
            around one, a ``MultiOptimizer`` whose sub-optimizers are
            introspectable, each of which then records, or a compiled model
            whose optimizer is any of them).
        per_variable: Also keep each variable's norms. Once on, it stays on
            (as diagnostics do); ``False`` leaves it as it is.

    Returns:
        The introspectable optimizer (the ``MultiOptimizer`` for one).

    Raises:
        TypeError: ``optimizer`` is not (and holds no) introspectable
            optimizer, or ``per_variable`` is not a bool.
        ValueError: two sub-optimizers of a ``MultiOptimizer`` have the same
            label, or its sub-optimizers are chosen by a function and it is
            not built yet.

    Examples:
        >>> import keras, introspect_opt
        >>> opt = introspect_opt.record_diagnostics(introspect_opt.IntrospectableSGD(0.5))
        >>> w = keras.Variable([3.0, 4.0])
        >>> _ = opt.apply_gradients([(keras.ops.convert_to_tensor([0.6, 0.8]), w)])
        >>> diagnostics = introspect_opt.last_update_diagnostics(opt)
        >>> {k: round(v, 4) for k, v in diagnostics.items()}
        {'gradient_norm': 1.0, 'update_norm': 0.5, 'update_to_weight_ratio': 0.1}
    """
    caller = "record_diagnostics()"
    per_variable = _check_switch(per_variable, caller)
    subs = resolve_multi_optimizer(optimizer, caller)
    targets = [resolve_optimizer(optimizer, caller)] if subs is None else list(subs.values())
    created = [target for target in targets if enable(target, per_variable)]
    if created:
        if getattr(optimizer, "train_function", None) is not None:  # a compiled model
            # Traced before, maybe before this optimizer was introspectable
            # (`introspect(opt)` after a fit): its state did not see that trace.
            optimizer.make_train_function(force=True)
        else:
            traced = [t.name for t in created if t._ensure_introspection_state().traced]
            if traced:
                warnings.warn(
                    f"record_diagnostics(): the update step of {', '.join(map(repr, traced))} "
                    "was traced into a tf.function before (e.g. by fit), which will not "
                    "record diagnostics until it is traced again. Pass the compiled model "
                    "instead (`record_diagnostics(model)`), or call "
                    "`model.make_train_function(force=True)`.",
                    stacklevel=2,
                )
    if subs is not None:
        return unwrap(optimizer_of(optimizer))[0]  # the MultiOptimizer
    return targets[0]


# The values are Any, not float: for a MultiOptimizer each is one sub-optimizer's
# dict, and whether ``obj`` holds one is known only at run time.
@overload
def last_update_diagnostics(obj: Any, per_variable: Literal[False] = False) -> dict[str, Any]: ...


@overload
def last_update_diagnostics(obj: Any, per_variable: Literal[True]) -> dict[str, dict[str, Any]]: ...


@overload
def last_update_diagnostics(
    obj: Any, per_variable: bool
) -> dict[str, Any] | dict[str, dict[str, Any]]: ...


def last_update_diagnostics(
    obj: Any, per_variable: bool = False
) -> dict[str, Any] | dict[str, dict[str, Any]]:
    """The diagnostics of the last applied update, read in one go.

    Args:
        obj: An introspectable optimizer, a ``LossScaleOptimizer`` around one,
            a ``MultiOptimizer`` whose sub-optimizers are introspectable, or a
            compiled model whose optimizer is any of them (on JAX, use the
            model inside ``fit``).
        per_variable: Read each variable's values instead of the global ones.

    Returns:
        ``{"gradient_norm": ..., "update_norm": ..., "update_to_weight_ratio":
        ...}`` as Python floats; ``nan`` where no update has been recorded
        since diagnostics were turned on or state was restored from a file
        without them. Empty when the optimizer does not record diagnostics
        (see ``record_diagnostics``) or is not built yet.

        With ``per_variable=True``: ``{variable.path: {"gradient_norm",
        "update_norm", "weight_norm", "update_to_weight_ratio",
        "effective_learning_rate"}}`` for every variable the optimizer was
        built for, in that order (``weight_norm``: before the update;
        ``effective_learning_rate``: ``update_norm / gradient_norm``, ``nan``
        for a zero gradient); ``nan`` for a variable the last update did not
        change (no gradient). Empty unless recorded with
        ``record_diagnostics(..., per_variable=True)``.

        For a ``MultiOptimizer``: ``{label: what its sub-optimizer gives}``,
        labels as in ``current_learning_rate`` (each sub-optimizer's name
        without the counter Keras appends to default names).

    Raises:
        TypeError: ``obj`` is not (and holds no) introspectable optimizer, or
            ``per_variable`` is not a bool.
        ValueError: two sub-optimizers of a ``MultiOptimizer`` have the same
            label, or its sub-optimizers are chosen by a function and it is
            not built yet.

    Examples:
        >>> import keras, introspect_opt
        >>> opt = introspect_opt.IntrospectableSGD(0.1)
        >>> introspect_opt.last_update_diagnostics(opt)
        {}
        >>> _ = introspect_opt.record_diagnostics(opt, per_variable=True)
        >>> w = keras.Variable([3.0, 4.0], name="w")
        >>> _ = opt.apply_gradients([(keras.ops.convert_to_tensor([0.6, 0.8]), w)])
        >>> rows = introspect_opt.last_update_diagnostics(opt, per_variable=True)
        >>> round(rows["w"]["effective_learning_rate"], 6)  # plain SGD: the rate
        0.1
    """
    caller = "last_update_diagnostics()"
    per_variable = _check_switch(per_variable, caller)
    reader = read_per_variable if per_variable else read
    subs = resolve_multi_optimizer(obj, caller)
    if subs is not None:
        return {label: reader(sub) for label, sub in subs.items()}
    return reader(resolve_optimizer(obj, caller))


def update_diagnostics(obj: Any) -> dict[str, float]:
    """Deprecated name of :func:`last_update_diagnostics` (it reads, it does not update).

    Args:
        obj: As for :func:`last_update_diagnostics`.

    Returns:
        As :func:`last_update_diagnostics`.

    Examples:
        >>> import warnings, introspect_opt
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", DeprecationWarning)
        ...     introspect_opt.update_diagnostics(introspect_opt.IntrospectableSGD(0.1))
        {}
    """
    warnings.warn(
        "introspect_opt.update_diagnostics() is renamed last_update_diagnostics(); "
        "the old name will be removed in 0.3.",
        DeprecationWarning,
        stacklevel=2,
    )
    return last_update_diagnostics(obj)
