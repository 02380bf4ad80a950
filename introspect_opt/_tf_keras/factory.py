"""Making any tf_keras optimizer class, or instance, introspectable."""

from __future__ import annotations

import inspect
from typing import Any, TypeVar

from introspect_opt._common.errors import describe_value
from introspect_opt._tf_keras import compat as private
from introspect_opt._tf_keras.mechanism import (
    LegacyIntrospectionMixin,
    NewIntrospectionMixin,
    _IntrospectionMixin,
)

_Declared = TypeVar("_Declared", bound=_IntrospectionMixin)

PUBLIC_MODULE = "introspect_opt.tf_keras"
PACKAGE = "introspect_opt"

# tf_keras base class -> its introspectable subclass (one per base, forever).
_CLASSES: dict[type, type[_IntrospectionMixin]] = {}

# What a class statement puts in its class's namespace by itself.
_STATEMENT_KEYS = frozenset(
    {"__module__", "__qualname__", "__doc__", "__firstlineno__", "__static_attributes__"}
)

_ABSTRACT = (private.NewOptimizer, private.LegacyOptimizer)


def _is_keras3(value: Any) -> bool:
    cls = value if isinstance(value, type) else type(value)
    return any(c.__module__.split(".")[0] == "keras" for c in cls.__mro__)


def mixin_for(optimizer_class: type) -> type:
    if issubclass(optimizer_class, private.NewOptimizer):
        return NewIntrospectionMixin
    return LegacyIntrospectionMixin


def _check_class(optimizer_class: object) -> None:
    if not isinstance(optimizer_class, type):
        raise TypeError(
            "introspectable(optimizer_class) expects a tf_keras optimizer class such as "
            "tf.keras.optimizers.Adam (with TF_USE_LEGACY_KERAS=1) or "
            "tf.keras.optimizers.legacy.Adam; received "
            f"{describe_value(optimizer_class)}. For an optimizer instance use "
            "introspect_opt.tf_keras.introspect(optimizer)."
        )
    if issubclass(optimizer_class, private.LossScaleOptimizer):
        raise TypeError(
            f"introspectable(optimizer_class) received the wrapper "
            f"{optimizer_class.__qualname__}, which applies no updates itself. Make the "
            "optimizer it wraps introspectable instead, e.g. "
            "tf.keras.mixed_precision.LossScaleOptimizer("
            "introspect_opt.tf_keras.IntrospectableAdam(...)); `compile` under a "
            "mixed_float16 policy does that wrapping for you."
        )
    if optimizer_class in _ABSTRACT:
        raise TypeError(
            "introspectable(optimizer_class) received the abstract base class "
            f"{optimizer_class.__module__}.{optimizer_class.__qualname__}; pass a "
            "concrete optimizer class such as tf.keras.optimizers.Adam, or your own "
            "subclass."
        )
    if issubclass(optimizer_class, (private.NewOptimizer, private.LegacyOptimizer)):
        return
    if _is_keras3(optimizer_class):
        raise TypeError(
            "introspectable(optimizer_class) received "
            f"{describe_value(optimizer_class)}, a Keras 3 optimizer class; "
            "introspect_opt.tf_keras handles tf_keras (Keras 2) classes only. Use "
            "the Keras 3 function `introspect_opt.introspectable` (the top-level "
            "package without TF_USE_LEGACY_KERAS=1), or pass the tf_keras class of "
            "the same name, e.g. tf_keras.optimizers.Adam."
        )
    raise TypeError(
        "introspectable(optimizer_class) expects a subclass of "
        "tf_keras.optimizers.Optimizer or tf_keras.optimizers.legacy.Optimizer; "
        f"received {describe_value(optimizer_class)}."
    )


def finish(cls: type[_IntrospectionMixin], base: type, package: str, registered: str) -> None:
    """Records ``cls`` as the introspectable subclass of ``base`` and registers it."""
    made: Any = cls
    made._introspect_base = base
    made.__signature__ = inspect.signature(base)
    private.register_serializable(cls, package, registered)
    private.alias_bare_name(cls)
    _CLASSES[base] = cls


def _ready_made_docstring(base: type, name: str) -> str:
    family = "legacy." if issubclass(base, private.LegacyOptimizer) else ""
    public = f"tf.keras.optimizers.{family}{base.__name__}"
    rate = inspect.signature(base).parameters["learning_rate"].default
    return (
        f"``{public}`` (tf_keras) that records the rate each update applied.\n\n"
        f"Same constructor, config and updates as ``{public}``; adds\n"
        "``current_learning_rate``.\n\n"
        "Examples:\n"
        f"    >>> from introspect_opt.tf_keras import {name}\n"
        f"    >>> opt = {name}()\n"
        "    >>> round(float(opt.current_learning_rate), 6)  # before any update: the first one's\n"
        f"    {round(float(rate), 6)}\n"
    )


def ready_made(declared: type[_Declared]) -> type[_Declared]:
    """Completes the class its declaration in ``optimizers.py`` made, as a ready-made class.

    Each ready-made class is one statement there, its entry in the table:
    ``class Introspectable[Legacy]<Name>(<family mixin>, <tf_keras class>): ...``.
    Type checkers read that statement. This gives the class it made the
    public module ``introspect_opt.tf_keras``, a docstring with an example
    (where the statement has none) and its registration for tf_keras
    serialization as ``introspect_opt>Introspectable[Legacy]<Name>``.

    Raises:
        TypeError: The statement is not of that form, or names the class
            differently.
    """
    bases = declared.__bases__
    base = bases[-1]
    legacy = issubclass(base, private.LegacyOptimizer)
    name = f"Introspectable{'Legacy' if legacy else ''}{base.__name__}"
    if len(bases) != 2 or bases[0] is not mixin_for(base) or set(vars(declared)) - _STATEMENT_KEYS:
        raise TypeError(
            f"{declared.__qualname__}: declare a ready-made class as `class "
            "Introspectable[Legacy]<Name>(<family mixin>, <tf_keras class>): ...` "
            "(NewIntrospectionMixin for tf_keras.optimizers.<Name>, "
            "LegacyIntrospectionMixin for tf_keras.optimizers.legacy.<Name>), with at "
            "most a docstring in its body."
        )
    if declared.__name__ != name:
        raise TypeError(f"{declared.__qualname__} extends {base.__qualname__}: name it {name}.")
    declared.__module__ = PUBLIC_MODULE
    declared.__doc__ = declared.__doc__ or _ready_made_docstring(base, name)
    finish(declared, base, PACKAGE, name)
    return declared


def introspectable(optimizer_class: type[object]) -> type[_IntrospectionMixin]:
    """Returns the introspectable subclass of a tf_keras (Keras 2) optimizer class.

    The subclass, named ``Introspectable<ClassName>``, has the same constructor,
    config and bit-identical updates, adds ``current_learning_rate``, and is
    registered for tf_keras serialization under the package ``introspect_opt``
    (``introspect_opt.<module>`` for classes from outside tf_keras), so
    ``load_model`` finds it without ``custom_objects``. For tf_keras's own
    optimizers it returns the ready-made classes (``IntrospectableAdam``,
    ``IntrospectableLegacyAdam``, ...). Repeated calls return the same class;
    a class that already is introspectable is returned as is. New optimizers
    (``tf.keras.optimizers.*``) and legacy ones
    (``tf.keras.optimizers.legacy.*``) are both accepted.

    Type checkers see the result as ``type[_IntrospectionMixin]``, the base
    every introspectable class of this Keras shares: its instances have
    ``current_learning_rate`` and every attribute of a Keras optimizer. No
    annotation can say "the class you passed, made introspectable"; the
    ready-made classes are typed exactly.

    Args:
        optimizer_class: A subclass of ``tf_keras.optimizers.Optimizer`` or of
            ``tf_keras.optimizers.legacy.Optimizer``: a built-in one or your own.

    Returns:
        The introspectable subclass.

    Raises:
        TypeError: ``optimizer_class`` is not a tf_keras optimizer class (a
            Keras 3 class, an instance, anything else), is abstract, or is a
            wrapper such as ``LossScaleOptimizer``.

    Examples:
        >>> import tf_keras
        >>> from introspect_opt import tf_keras as introspect_tfk
        >>> Lion = introspect_tfk.introspectable(tf_keras.optimizers.Lion)
        >>> Lion is introspect_tfk.IntrospectableLion
        True
        >>> LegacyAdam = introspect_tfk.introspectable(tf_keras.optimizers.legacy.Adam)
        >>> LegacyAdam.__name__
        'IntrospectableLegacyAdam'
        >>> class Mine(tf_keras.optimizers.SGD):
        ...     pass
        >>> opt = introspect_tfk.introspectable(Mine)(learning_rate=0.05)
        >>> type(opt).__name__, round(float(opt.current_learning_rate), 6)
        ('IntrospectableMine', 0.05)
    """
    _check_class(optimizer_class)
    if issubclass(optimizer_class, _IntrospectionMixin):
        return optimizer_class
    cls = _CLASSES.get(optimizer_class)
    if cls is None:
        name = f"Introspectable{optimizer_class.__name__}"
        cls = type(
            name,
            (mixin_for(optimizer_class), optimizer_class),
            {
                "__module__": optimizer_class.__module__,
                "__qualname__": name,
                "__doc__": (
                    f"``{optimizer_class.__qualname__}`` that records the learning rate "
                    "each update applied (made by "
                    "``introspect_opt.tf_keras.introspectable``)."
                ),
            },
        )
        finish(
            cls,
            optimizer_class,
            f"{PACKAGE}.{optimizer_class.__module__}",
            f"Introspectable{optimizer_class.__qualname__}",
        )
    return cls


def introspect(optimizer: object) -> _IntrospectionMixin:
    """Makes a tf_keras optimizer instance somebody else built introspectable, in place.

    The instance becomes an instance of ``introspectable(type(optimizer))``
    (a subclass of its class, so ``isinstance`` checks still hold); its
    cached-rate state is created now (for a legacy optimizer that never
    updated: with its step counter, at its first update), in the scope of the
    strategy it was created under. Nothing else about it changes and training continues
    bit-identically. Until its next update, ``current_learning_rate`` is
    derived from its step counter: for a schedule, the rate the last update
    applied (up to rounding); for a float rate, the rate variable's current
    value. Call it before the first traced step: a train function tf_keras
    traced earlier keeps the old update code until it is traced again.

    Args:
        optimizer: A tf_keras optimizer instance, new or legacy (not a
            ``LossScaleOptimizer``: pass its ``inner_optimizer``).

    Returns:
        The same object. Type checkers see it as ``_IntrospectionMixin``,
        the base every introspectable class of this Keras shares: it has
        ``current_learning_rate`` and every attribute of a Keras optimizer.

    Raises:
        TypeError: ``optimizer`` is not a tf_keras optimizer instance (a
            Keras 3 one, a class, anything else), or is a wrapper.

    Examples:
        >>> import tf_keras
        >>> from introspect_opt import tf_keras as introspect_tfk
        >>> opt = tf_keras.optimizers.legacy.Adam(learning_rate=0.01)  # made elsewhere
        >>> opt = introspect_tfk.introspect(opt)
        >>> isinstance(opt, tf_keras.optimizers.legacy.Adam), type(opt).__name__
        (True, 'IntrospectableLegacyAdam')
        >>> round(float(opt.current_learning_rate), 6)
        0.01
    """
    if isinstance(optimizer, type) or not isinstance(
        optimizer, (private.NewOptimizer, private.LegacyOptimizer)
    ):
        if isinstance(optimizer, type):
            hint = " Use introspect_opt.tf_keras.introspectable(cls) for classes."
        elif _is_keras3(optimizer):
            hint = (
                " That is a Keras 3 optimizer: use the Keras 3 function "
                "`introspect_opt.introspect` (the top-level package without "
                "TF_USE_LEGACY_KERAS=1)."
            )
        else:
            hint = ""
        raise TypeError(
            "introspect(optimizer) expects a tf_keras optimizer instance such as "
            "tf.keras.optimizers.Adam(...) or tf.keras.optimizers.legacy.Adam(...); "
            f"received {describe_value(optimizer)}.{hint}"
        )
    if isinstance(optimizer, private.LossScaleOptimizer):
        raise TypeError(
            f"introspect(optimizer) received a {type(optimizer).__name__}, which applies "
            "no updates itself: pass the optimizer it wraps, "
            "introspect(optimizer.inner_optimizer)."
        )
    if isinstance(optimizer, _IntrospectionMixin):
        return optimizer
    instance: Any = optimizer
    instance.__class__ = introspectable(type(instance))
    if isinstance(instance, private.NewOptimizer):
        instance._introspect_state()
        private.forget_coalesced_children(instance)
    # A legacy optimizer creates the state with its step counter: now if that
    # exists, else at its first update, restore or read (in that graph).
    elif private.legacy_has_counter(instance):
        instance._introspect_create_counter_and_state()
    introspected: _IntrospectionMixin = instance
    return introspected


def resolve_optimizer(obj: Any, caller: str) -> Any:
    """The introspectable optimizer behind a model, a LossScaleOptimizer or itself."""
    optimizer = obj
    if isinstance(optimizer, private.Model):
        optimizer = getattr(obj, "optimizer", None)
        if optimizer is None:
            raise TypeError(
                f"{caller} received the model '{obj.name}', which is not compiled: "
                "compile it with an introspectable optimizer first."
            )
    if isinstance(optimizer, private.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    if isinstance(optimizer, _IntrospectionMixin):
        return optimizer
    if isinstance(optimizer, (private.NewOptimizer, private.LegacyOptimizer)):
        raise TypeError(
            f"{caller} received {describe_value(obj)}, whose optimizer "
            f"{type(optimizer).__name__} does not record the rate it applies. Use an "
            "introspectable class (e.g. introspect_opt.tf_keras.IntrospectableSGD), or "
            "convert the instance with introspect_opt.tf_keras.introspect(optimizer) "
            "before training."
        )
    hint = (
        " That is a Keras 3 object: use the Keras 3 function "
        "`introspect_opt.current_learning_rate`."
        if _is_keras3(obj)
        else ""
    )
    raise TypeError(
        f"{caller} expects an introspectable tf_keras optimizer, a tf_keras "
        "LossScaleOptimizer around one, or a tf_keras model compiled with either; "
        f"received {describe_value(obj)}.{hint}"
    )


def current_learning_rate(obj: Any) -> Any:
    """The learning rate the last applied update used, from whatever holds it.

    Looks through a compiled model (``model.optimizer``) and a
    ``LossScaleOptimizer`` (``inner_optimizer``; under a ``mixed_float16``
    policy, tf_keras's ``compile`` wraps the optimizer in one).

    Args:
        obj: An introspectable tf_keras optimizer (new or legacy), a
            ``LossScaleOptimizer`` around one, or a tf_keras model compiled with
            either.

    Returns:
        A scalar tensor, as ``optimizer.current_learning_rate``.

    Raises:
        TypeError: ``obj`` holds a plain optimizer, or none at all.

    Examples:
        >>> import tf_keras
        >>> from introspect_opt import tf_keras as introspect_tfk
        >>> model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(2,))])
        >>> model.compile(introspect_tfk.IntrospectableAdam(0.05), loss="mse")
        >>> round(float(introspect_tfk.current_learning_rate(model)), 6)
        0.05
    """
    return resolve_optimizer(obj, "current_learning_rate(obj)").current_learning_rate
