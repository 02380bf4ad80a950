"""Finding the introspectable optimizer behind what a user holds, and reading it.

Users hold a model, a ``LossScaleOptimizer``, or the optimizer itself; every
public function and callback takes any of them. One place unwraps them, with
one set of error messages, and one place describes objects in errors.
"""

from __future__ import annotations

from typing import Any

import keras

from introspect_opt._keras3.mixin import IntrospectableOptimizer


def describe_value(value: Any) -> str:
    """``repr(value)`` (shortened) and its type, for error messages."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} (type {type(value).__module__}.{type(value).__qualname__})"


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
    if hasattr(obj, "jax_state_sync"):
        obj.jax_state_sync()
    return obj.optimizer


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
            f"its own rate: pass each one to {caller}, for sub-optimizers made "
            "introspectable."
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

    Args:
        obj: An introspectable optimizer, a ``LossScaleOptimizer`` around one,
            or a compiled model whose ``model.optimizer`` is either.
        optimizer_variables: Optional values for ``optimizer.variables`` (of
            ``obj`` itself, e.g. the second result of ``stateless_apply``) to
            read the rate from instead of the variables.

    Returns:
        A scalar tensor, as ``optimizer.current_learning_rate``.

    Raises:
        TypeError: ``obj`` holds a plain Keras optimizer, or none at all.
        ValueError: ``optimizer_variables`` has the wrong length.

    Examples:
        >>> import keras, introspect_opt
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile(introspect_opt.IntrospectableAdam(0.05), loss="mse")
        >>> round(float(introspect_opt.current_learning_rate(model)), 6)
        0.05
    """
    optimizer = resolve_optimizer(obj, "current_learning_rate()")
    if optimizer_variables is None:
        return optimizer.current_learning_rate
    holder = obj if isinstance(obj, keras.optimizers.Optimizer) else optimizer
    values = list(optimizer_variables)
    if len(values) != len(holder.variables):
        raise ValueError(
            f"current_learning_rate() received {len(values)} optimizer_variables "
            f"for {describe_optimizer(holder)}, which has {len(holder.variables)} "
            "variables; pass the list returned by its stateless_apply (or "
            "[v.value for v in optimizer.variables])."
        )
    with keras.StatelessScope(state_mapping=list(zip(holder.variables, values, strict=True))):
        return optimizer.current_learning_rate
