"""Finding the introspectable optimizer behind what a user holds, and reading it.

Users hold a model, a ``LossScaleOptimizer``, or the optimizer itself; every
public function and callback takes any of them. One place unwraps them, with
one set of error messages (values are described by ``_common.errors.describe_value``).
A ``MultiOptimizer`` is read through its sub-optimizers, each under its label.
"""

from __future__ import annotations

from typing import Any

import keras

from introspect_opt._common.errors import describe_value
from introspect_opt._common.logger import label as _label
from introspect_opt._keras3 import compat as _keras_private
from introspect_opt._keras3.mixin import IntrospectableOptimizer


def describe_optimizer(optimizer: Any) -> str:
    """``IntrospectableSGD 'sgd'``: an optimizer's class and name."""
    return f"{type(optimizer).__name__} '{getattr(optimizer, 'name', '?')}'"


def is_multi_optimizer(value: Any) -> bool:
    return any(c.__name__ == "MultiOptimizer" for c in type(value).__mro__)


def unwrap(optimizer: Any) -> tuple[Any, bool]:
    """(the optimizer that applies updates, whether a LossScaleOptimizer wraps it)."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.inner_optimizer, True
    return optimizer, False


def optimizer_of(obj: Any) -> Any:
    """``obj``'s optimizer: the optimizer itself, or a model's (state synced on JAX).

    On JAX, ``fit`` keeps the training state off the variables between steps;
    a model's is put back first (cheap when it already is).
    """
    if isinstance(obj, keras.optimizers.Optimizer) or not hasattr(obj, "optimizer"):
        return obj
    _keras_private.sync_training_state(obj)
    return obj.optimizer


def label(optimizer: Any) -> str:
    """The optimizer's log label: its name without the counter Keras appends."""
    return _label(optimizer, _keras_private.unnumbered_default_name)


def sub_optimizers(multi: Any, caller: str) -> dict[str, Any]:
    """``{label: sub-optimizer}`` of a ``MultiOptimizer``, each introspectable.

    Labels are those ``LearningRateLogger`` gives single optimizers, so a
    sub-optimizer logs under the same key wherever it is used.

    Raises:
        TypeError: a sub-optimizer is a plain Keras optimizer.
        ValueError: two sub-optimizers have the same label, or the
            sub-optimizers are not known yet (chosen by a function, unbuilt).
    """
    optimizers = list(multi.optimizers)
    if not optimizers:
        raise ValueError(
            f"{caller} cannot read {describe_optimizer(multi)} yet: a function "
            "chooses its sub-optimizers, and Keras knows them only once it is built "
            "(its first update, or `optimizer.build(model.trainable_variables)`)."
        )
    labelled: dict[str, Any] = {}
    for optimizer in optimizers:
        if not isinstance(optimizer, IntrospectableOptimizer):
            raise TypeError(
                f"{describe_optimizer(multi)} holds the plain Keras optimizer "
                f"{describe_optimizer(optimizer)}, which does not record the rate it "
                "applied. Make every sub-optimizer introspectable with "
                "`introspect_opt.introspect(multi_optimizer)` before training, or "
                f"create it as `introspect_opt.Introspectable{type(optimizer).__name__}(...)`."
            )
        key = label(optimizer)
        if key in labelled:
            raise ValueError(
                f"{describe_optimizer(multi)} holds two sub-optimizers labelled "
                f"{key!r}: {describe_optimizer(labelled[key])} and "
                f"{describe_optimizer(optimizer)}. Give them distinct names "
                f"(`name=` when you create them, e.g. name='{key}_encoder'), so that "
                "their rates can be told apart."
            )
        labelled[key] = optimizer
    return labelled


def resolve_multi_optimizer(obj: Any, caller: str) -> dict[str, Any] | None:
    """``{label: sub-optimizer}`` if ``obj`` holds a ``MultiOptimizer``, else None.

    ``obj`` as for :func:`resolve_optimizer`; errors as :func:`sub_optimizers`.
    """
    optimizer, _ = unwrap(optimizer_of(obj))
    if is_multi_optimizer(optimizer):
        return sub_optimizers(optimizer, caller)
    return None


def resolve_optimizer(obj: Any, caller: str) -> Any:
    """The introspectable optimizer behind ``obj``, with its state in place.

    ``obj`` may be the optimizer, a ``LossScaleOptimizer`` around one, or a
    compiled model. Anything else is a TypeError that says what to pass.
    """
    optimizer, _ = unwrap(optimizer_of(obj))
    if isinstance(optimizer, IntrospectableOptimizer):
        return optimizer
    if is_multi_optimizer(optimizer):
        raise TypeError(
            f"{describe_optimizer(optimizer)} holds several optimizers, each with "
            f"its own rate: pass each one to {caller} (`optimizer.optimizers`), for "
            "sub-optimizers made introspectable."
        )
    if isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            f"{describe_optimizer(optimizer)} is a plain Keras optimizer, which "
            "does not record the rate it applied. Make it introspectable with "
            "`introspect_opt.introspect(optimizer)` before training, or create it "
            f"as `introspect_opt.Introspectable{type(optimizer).__name__}(...)`."
        )
    raise TypeError(
        f"{caller} expects an introspectable optimizer, a LossScaleOptimizer "
        f"around one, or a compiled model; received {describe_value(obj)}."
    )


def current_learning_rate(obj: Any, optimizer_variables: Any = None) -> Any:
    """The learning rate the last applied update used, from whatever holds it.

    On JAX, ``fit`` keeps the training state off the model's variables between
    steps; given a model, this puts it back first (``model.jax_state_sync()``),
    so it also works in callbacks. If you call ``optimizer.stateless_apply``
    yourself, pass the optimizer variables it returned.

    A ``keras.optimizers.MultiOptimizer`` (or a model compiled with one) gives
    the rate of each of its sub-optimizers, in a dict keyed by the label
    ``LearningRateLogger`` logs it under: the sub-optimizer's ``name`` without
    the counter Keras appends to default names (``{"adam": ..., "sgd": ...}``).

    Args:
        obj: An introspectable optimizer, a ``LossScaleOptimizer`` around one,
            a ``MultiOptimizer`` whose sub-optimizers are introspectable, or a
            compiled model whose ``model.optimizer`` is any of them.
        optimizer_variables: Optional values for ``optimizer.variables`` (of
            ``obj`` itself, e.g. the second result of ``stateless_apply``) to
            read the rate from instead of the variables.

    Returns:
        A scalar tensor, as ``optimizer.current_learning_rate``
        (``float(...)`` gives the number); for a ``MultiOptimizer``, a
        ``dict[str, scalar tensor]`` with one entry per sub-optimizer. The
        annotation is ``Any``, as for a single optimizer: whether ``obj``
        holds a ``MultiOptimizer`` is known only at run time.

    Raises:
        TypeError: ``obj`` holds a plain Keras optimizer (also as a
            sub-optimizer of a ``MultiOptimizer``: make it introspectable with
            ``introspect_opt.introspect(multi_optimizer)`` before training),
            or none at all.
        ValueError: ``optimizer_variables`` has the wrong length; two
            sub-optimizers of a ``MultiOptimizer`` have the same label (give
            them distinct ``name=``); or a ``MultiOptimizer`` whose
            sub-optimizers a function chooses is not built yet.

    Examples:
        >>> import keras, introspect_opt
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile(introspect_opt.IntrospectableAdam(0.05), loss="mse")
        >>> round(float(introspect_opt.current_learning_rate(model)), 6)
        0.05
        >>> multi = keras.optimizers.MultiOptimizer(keras.optimizers.OptimizerMap(
        ...     introspect_opt.IntrospectableSGD(0.01),
        ...     {"dense/kernel": introspect_opt.IntrospectableAdam(0.001)},
        ... ))
        >>> rates = introspect_opt.current_learning_rate(multi)
        >>> {name: round(float(rate), 6) for name, rate in rates.items()}
        {'adam': 0.001, 'sgd': 0.01}
    """
    caller = "current_learning_rate()"
    subs = resolve_multi_optimizer(obj, caller)
    optimizer: Any = resolve_optimizer(obj, caller) if subs is None else None

    def read() -> Any:
        if subs is not None:
            return {name: sub.current_learning_rate for name, sub in subs.items()}
        return optimizer.current_learning_rate

    if optimizer_variables is None:
        return read()
    if isinstance(obj, keras.optimizers.Optimizer):
        holder = obj
    else:  # the model's: the introspectable optimizer, or the MultiOptimizer
        holder = optimizer if subs is None else unwrap(obj.optimizer)[0]
    values = list(optimizer_variables)
    if len(values) != len(holder.variables):
        raise ValueError(
            f"current_learning_rate() received {len(values)} optimizer_variables "
            f"for {describe_optimizer(holder)}, which has {len(holder.variables)} "
            "variables; pass the list returned by its stateless_apply (or "
            "[v.value for v in optimizer.variables])."
        )
    with keras.StatelessScope(state_mapping=list(zip(holder.variables, values, strict=True))):
        return read()
