"""Making any Keras optimizer class, or instance, introspectable."""

from __future__ import annotations

import inspect
from typing import Any, TypeVar, cast

import keras

from introspect_opt._common.errors import describe_value
from introspect_opt._keras3 import compat as _keras_private
from introspect_opt._keras3.mixin import IntrospectableOptimizer, rate_dtype
from introspect_opt._keras3.resolve import is_multi_optimizer

# Keras base class -> its introspectable subclass (one per base, forever).
_CLASSES: dict[type, type] = {}

_Declared = TypeVar("_Declared", bound=IntrospectableOptimizer)

# What a class statement puts in its class's namespace by itself.
_STATEMENT_KEYS = frozenset(
    {"__module__", "__qualname__", "__doc__", "__firstlineno__", "__static_attributes__"}
)

_WRAPPERS = (keras.optimizers.LossScaleOptimizer,)


def _check_class(optimizer_class: object) -> None:
    if not isinstance(optimizer_class, type):
        raise TypeError(
            "introspectable() expects a Keras 3 optimizer class such as "
            f"keras.optimizers.Adam; received {describe_value(optimizer_class)}. For an "
            "optimizer instance use introspect_opt.introspect(optimizer)."
        )
    if issubclass(optimizer_class, _WRAPPERS) or optimizer_class.__name__ == "MultiOptimizer":
        raise TypeError(
            f"introspectable() received the wrapper {optimizer_class.__qualname__}, "
            "which applies no updates itself. Make the optimizer it wraps "
            "introspectable instead, e.g. "
            "keras.optimizers.LossScaleOptimizer(introspect_opt.IntrospectableAdam(...))."
        )
    if optimizer_class in (keras.optimizers.Optimizer, keras.Optimizer):
        raise TypeError(
            "introspectable() received the abstract base class "
            "keras.optimizers.Optimizer; pass a concrete optimizer class such as "
            "keras.optimizers.Adam, or your own subclass."
        )
    if not issubclass(optimizer_class, keras.optimizers.Optimizer):
        raise TypeError(
            "introspectable() expects a subclass of keras.optimizers.Optimizer "
            f"(Keras 3); received {optimizer_class.__module__}."
            f"{optimizer_class.__qualname__}. For tf_keras (Keras 2) optimizers, "
            "new and legacy, use introspect_opt.tf_keras.introspectable(...)."
        )


def _docstring(base: type, name: str, from_keras: bool) -> str:
    public = f"keras.optimizers.{base.__name__}" if from_keras else base.__qualname__
    text = (
        f"``{public}`` that records the learning rate each update applied.\n\n"
        f"Same constructor and config as ``{public}``, bit-identical updates, files "
        "interchangeable with it; adds ``current_learning_rate``, the rate the "
        "last applied update used. Made by ``introspect_opt.introspectable``.\n"
    )
    if from_keras:
        text += (
            "\nExamples:\n"
            "    >>> import introspect_opt\n"
            f"    >>> opt = introspect_opt.{name}(learning_rate=0.01)\n"
            "    >>> round(float(opt.current_learning_rate), 6)\n"
            "    0.01\n"
        )
    return text


def introspectable(optimizer_class: type[object]) -> type[IntrospectableOptimizer]:
    """Returns the introspectable subclass of a Keras 3 optimizer class.

    The subclass, named ``Introspectable<ClassName>``, has the same constructor,
    config and bit-identical updates, adds ``current_learning_rate``, and is
    registered for Keras serialization under the package ``introspect_opt``
    (``introspect_opt.<module>`` for classes from outside Keras). For Keras's
    own optimizers it returns the ready-made classes (``IntrospectableAdam``,
    ...). Repeated calls return the same class; a class that already is
    introspectable is returned as is.

    Type checkers see the result as ``type[IntrospectableOptimizer]``, the base
    every introspectable class of this Keras shares: its instances have
    ``current_learning_rate`` and every attribute of a Keras optimizer. No
    annotation can say "the class you passed, made introspectable"; the
    ready-made classes are typed exactly.

    Args:
        optimizer_class: A subclass of ``keras.optimizers.Optimizer``: a
            built-in one or your own.

    Returns:
        The introspectable subclass.

    Raises:
        TypeError: ``optimizer_class`` is not a Keras 3 optimizer class (a
            tf_keras class, an instance, anything else), is abstract, or is a
            wrapper such as ``LossScaleOptimizer``.

    Examples:
        >>> import keras, introspect_opt
        >>> Lion = introspect_opt.introspectable(keras.optimizers.Lion)
        >>> Lion.__name__, Lion is introspect_opt.IntrospectableLion
        ('IntrospectableLion', True)
        >>> opt = Lion(learning_rate=1e-3)
        >>> round(float(opt.current_learning_rate), 6)
        0.001
    """
    _check_class(optimizer_class)
    if issubclass(optimizer_class, IntrospectableOptimizer):
        return optimizer_class
    optimizer_class = _keras_private.public_class(optimizer_class)
    cls = _CLASSES.get(optimizer_class)
    if cls is None:
        name = f"Introspectable{optimizer_class.__name__}"
        from_keras = optimizer_class.__module__.split(".")[0] == "keras"
        cls = type(
            name,
            (IntrospectableOptimizer, _keras_private.backend_class(optimizer_class)),
            {
                "__module__": "introspect_opt" if from_keras else optimizer_class.__module__,
                "__qualname__": name,
                "__doc__": _docstring(optimizer_class, name, from_keras),
            },
        )
        generated: Any = cls
        generated._introspect_base = optimizer_class
        generated.__signature__ = inspect.signature(optimizer_class)
        package = "introspect_opt" if from_keras else f"introspect_opt.{optimizer_class.__module__}"
        # The qualified name keeps two nested classes of one module apart.
        keras.saving.register_keras_serializable(
            package=package, name=f"Introspectable{optimizer_class.__qualname__}"
        )(cls)
        _CLASSES[optimizer_class] = cls
    made: type[IntrospectableOptimizer] = cls
    return made


def ready_made(declared: type[_Declared]) -> type[_Declared]:
    """Puts ``introspectable(<Keras class>)`` in place of its declaration in ``optimizers.py``.

    Each ready-made class is one statement there, its entry in the table:
    ``class Introspectable<Name>(IntrospectableOptimizer, keras.optimizers.<Name>): ...``.
    Type checkers read that statement. At run time the class is the one
    ``introspectable(keras.optimizers.<Name>)`` makes (over the fused variant
    Keras instantiates on torch, registered, documented), with the
    statement's docstring where it has one. The statement's class is not
    kept, so it may hold nothing else.

    Raises:
        TypeError: The statement is not of that form, or names the class
            differently from ``introspectable``.
    """
    bases = declared.__bases__
    if (
        len(bases) != 2
        or bases[0] is not IntrospectableOptimizer
        or set(vars(declared)) - _STATEMENT_KEYS
    ):
        raise TypeError(
            f"{declared.__qualname__}: declare a ready-made class as `class "
            "Introspectable<Name>(IntrospectableOptimizer, keras.optimizers.<Name>): ...`, "
            "with at most a docstring in its body (introspectable() makes the class)."
        )
    cls = introspectable(bases[1])
    if cls.__name__ != declared.__name__:
        raise TypeError(
            f"{declared.__qualname__} extends {bases[1].__qualname__}: name it {cls.__name__}."
        )
    if declared.__doc__:
        cls.__doc__ = declared.__doc__
    return cast("type[_Declared]", cls)


def introspect(optimizer: object) -> IntrospectableOptimizer:
    """Makes an optimizer instance somebody else built introspectable, in place.

    The instance becomes an instance of ``introspectable(type(optimizer))``
    (a subclass of its class, so ``isinstance`` checks still hold); nothing
    else about it changes and training continues bit-identically. If it is
    already built, its cached-rate state is created now; until its next update,
    ``current_learning_rate`` is derived from its step counter: for a schedule,
    the rate the last update applied (up to rounding); for a float rate, the
    rate variable's current value, which a callback may have changed since.
    ``model.save`` then writes the introspectable class.

    Call it before ``fit`` / the first traced step: a train function Keras
    traced earlier keeps the old update code until it is retraced (e.g. by
    ``model.compile`` again); until then the value is derived, not cached.

    A ``LossScaleOptimizer`` that wraps it already checks mixed-precision
    files with it from then on, as one made around an introspectable
    optimizer does. Finding such a wrapper scans the objects in memory once:
    about 0.1 to 0.3 seconds in a process that has TensorFlow or torch loaded.

    A ``keras.optimizers.MultiOptimizer`` applies no updates itself: each of
    its sub-optimizers is made introspectable in place, by these same rules,
    and the ``MultiOptimizer`` is returned unchanged (read its rates with
    ``introspect_opt.current_learning_rate(multi)``, a dict by label). Call it
    before the ``MultiOptimizer`` is built when a function (rather than an
    ``OptimizerMap``) chooses the sub-optimizers: it can reach them only
    once built (return introspectable optimizers from the function instead).

    Args:
        optimizer: A Keras 3 optimizer instance, or a ``MultiOptimizer`` (not
            a ``LossScaleOptimizer``: pass its ``inner_optimizer``).

    Returns:
        The same object. Type checkers see it as ``IntrospectableOptimizer``,
        the base every introspectable class of this Keras shares: it has
        ``current_learning_rate`` and every attribute of a Keras optimizer.

        A ``MultiOptimizer`` comes back too, its sub-optimizers made
        introspectable: only they have ``current_learning_rate``.

    Raises:
        TypeError: ``optimizer`` is not a Keras 3 optimizer instance (a
            tf_keras one, a class, anything else), or is a wrapper.
        ValueError: ``optimizer`` is an unbuilt ``MultiOptimizer`` whose
            sub-optimizers a function chooses.

    Examples:
        >>> import keras, introspect_opt
        >>> opt = keras.optimizers.Adam(learning_rate=0.01)  # made by someone else
        >>> opt = introspect_opt.introspect(opt)
        >>> isinstance(opt, keras.optimizers.Adam), type(opt).__name__
        (True, 'IntrospectableAdam')
        >>> round(float(opt.current_learning_rate), 6)
        0.01
    """
    if isinstance(optimizer, type) or not isinstance(optimizer, keras.optimizers.Optimizer):
        if isinstance(optimizer, type):
            hint = " (a class: use introspect_opt.introspectable(cls) for classes)"
        else:
            hint = ""
        raise TypeError(
            "introspect() expects a Keras 3 optimizer instance such as "
            f"keras.optimizers.Adam(...); received {describe_value(optimizer)}{hint}."
        )
    if isinstance(optimizer, _WRAPPERS):
        raise TypeError(
            f"introspect() received a {type(optimizer).__name__}, which applies no "
            "updates itself: pass the optimizer(s) it wraps, e.g. "
            "introspect(optimizer.inner_optimizer)."
        )
    if is_multi_optimizer(optimizer):
        _introspect_sub_optimizers(optimizer)
        multi: Any = optimizer
        unchanged: IntrospectableOptimizer = multi  # typed as documented in Returns
        return unchanged
    if isinstance(optimizer, IntrospectableOptimizer):
        return optimizer
    instance: Any = optimizer
    instance.__class__ = introspectable(type(instance))
    # A LossScaleOptimizer may wrap it already: it checks files before it loads from now on.
    _keras_private.hook_wrapper_loads(instance)
    if instance.built:
        with _keras_private.eager_scope(), _keras_private.strategy_scope(instance):
            state = instance._ensure_introspection_state()
            state.create_variables(instance, rate_dtype(instance, instance.learning_rate))
    introspected: IntrospectableOptimizer = instance
    return introspected


def _introspect_sub_optimizers(multi: Any) -> None:
    """``introspect()`` of a ``MultiOptimizer``: each sub-optimizer, in place."""
    optimizers = list(multi.optimizers)
    if not optimizers and not multi.built:
        # Keras lists the optimizers of an OptimizerMap from the start, and a
        # function's only as its build() calls the function on each variable.
        raise ValueError(
            f"introspect() cannot reach the sub-optimizers of {type(multi).__name__} "
            f"'{multi.name}' before it is built: a function chooses them. Return "
            "introspectable optimizers from that function "
            "(introspect_opt.IntrospectableAdam(...)), or pass a "
            "keras.optimizers.OptimizerMap."
        )
    for sub_optimizer in optimizers:
        introspect(sub_optimizer)
