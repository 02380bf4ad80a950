"""The mixin that makes a Keras optimizer introspectable: the cache, and nothing else.

Placed before a Keras optimizer class in the bases, it:

* creates the cached-rate state when the optimizer is built (``_keras3.state``);
* writes, on every applied update, the learning rate Keras passed to
  ``update_step`` and the update count it belongs to (two scalar writes on the
  device), then hands the update to the state's opt-in features;
* reads it back as ``current_learning_rate`` (a snapshot; before any update,
  or after a file restored ``iterations`` without the cache, the value derived
  from the schedule so that the contract still holds);
* saves and loads it, all or nothing (``_keras3.persistence``).

Every Keras method it overrides is named in ``_keras3.compat``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
from keras import ops

from introspect_opt._common.names import STATE_ATTRIBUTE
from introspect_opt._common.protocols import WeightsStore
from introspect_opt._keras3 import compat as _keras_private
from introspect_opt._keras3 import turns as _turns
from introspect_opt._keras3.persistence import files as _persistence
from introspect_opt._keras3.persistence import loss_scale as _loss_scale
from introspect_opt._keras3.persistence import queue as _queue

if keras.backend.backend() == "tensorflow":
    from introspect_opt._keras3.persistence import checkpoint as _checkpoint
else:
    _checkpoint = None  # type: ignore[assignment]
from introspect_opt._keras3.features import Update, features
from introspect_opt._keras3.state import AppliedRateState

if TYPE_CHECKING:
    from keras.optimizers import Optimizer as _OptimizerBase
else:
    _OptimizerBase = object


def _static_dtype_and_rank(value: Any) -> tuple[str | None, int | None]:
    """The dtype and rank of a learning-rate value, known without evaluating it.

    The dtype is None for anything that is not a number (bool included); the
    rank is None when unknown (a tensor of unknown shape while tracing).
    """
    if isinstance(value, (bool, np.bool_)):
        return None, 0
    if isinstance(value, (int, float)):
        return keras.config.floatx(), 0
    dtype, shape = getattr(value, "dtype", None), getattr(value, "shape", None)
    if dtype is None or shape is None:
        return None, None
    try:
        dtype = keras.backend.standardize_dtype(dtype)
    except ValueError:
        return None, None
    rank = len(shape) if isinstance(shape, tuple) else getattr(shape, "rank", None)
    return str(dtype), rank


def rate_dtype(optimizer: Any, value: Any) -> str:
    """Validates a learning-rate value and returns the dtype to cache it in.

    Only static information is used (no host round-trip), so this runs on
    every update at no device cost. Floats keep their dtype (bit-exact cache);
    integer rates are cached in ``floatx``.
    """
    dtype, rank = _static_dtype_and_rank(value)
    is_float = dtype is not None and "float" in dtype
    is_int = dtype is not None and dtype.startswith(("int", "uint"))
    if (is_float or is_int) and rank in (0, None):
        return str(dtype) if is_float else keras.config.floatx()
    details = f"type {type(value).__name__}"
    if dtype is not None:
        details += f", dtype {dtype}"
    if rank:
        details += f", shape {tuple(value.shape)}"
    raise ValueError(
        f"The learning rate of {type(optimizer).__name__} '{optimizer.name}' comes "
        f"from {_keras_private.learning_rate_source(optimizer)!r}, which returned "
        f"{value!r} ({details}). Expected a scalar number: a Python float or a 0-d "
        "float tensor. Make the schedule or callable return one, e.g. "
        "`keras.ops.convert_to_tensor(0.01)`."
    )


def _refuse_foreign_strategy(optimizer: Any) -> None:
    """Refuses updates under a strategy the optimizer was not created in.

    Checked while tracing (no device cost). Plain Keras goes on silently, with
    every replica applying its own update: the schedule runs N times too fast
    and the "applied rate" would describe one replica's update of N.
    """
    strategy = _keras_private.foreign_strategy(optimizer)
    if strategy is not None:
        replicas = strategy.num_replicas_in_sync
        raise RuntimeError(
            f"{type(optimizer).__name__} '{optimizer.name}' was created outside the "
            f"scope of the {type(strategy).__name__} running this update "
            f"({replicas} replicas). Keras would apply each replica's update "
            f"separately, advancing `iterations` and the schedule {replicas} times "
            "per step. Create the optimizer (and compile the model) inside "
            "`strategy.scope()`."
        )


# With KERAS_BACKEND=jax, `fit` and `stateless_apply` carry only the variables
# listed in `optimizer.variables` through a step: the cache must be listed there.
# Elsewhere it stays out, so that wrappers that save `optimizer.variables`
# (LossScaleOptimizer) write exactly what they write for the plain optimizer.
_LIST_CACHE_IN_VARIABLES = keras.backend.backend() == "jax"


class IntrospectableOptimizer(_OptimizerBase):
    """The base of every introspectable optimizer: adds ``current_learning_rate``.

    Every ``Introspectable<Name>`` class, every class ``introspectable()``
    makes and every instance ``introspect()`` changes is an instance of this
    class, placed before the Keras optimizer class in the bases. Use it in
    ``isinstance`` checks and type hints; create optimizers with the ready-made
    classes or ``introspectable()``.

    Examples:
        >>> import keras, introspect_opt
        >>> opt = introspect_opt.IntrospectableAdam(0.01)
        >>> isinstance(opt, introspect_opt.IntrospectableOptimizer)
        True
        >>> isinstance(keras.optimizers.Adam(0.01), introspect_opt.IntrospectableOptimizer)
        False
    """

    # The public Keras class an introspectable class extends; set on each
    # introspectable class itself (not inherited by user subclasses of it).
    _introspect_base: type

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        base = type(self).__dict__.get("_introspect_base")
        if base is not None:
            positional = list(inspect.signature(base).parameters)[: len(args)]
            defaulted = kwargs.get("name") is None and "name" not in positional
            if defaulted:
                # Keras names an unnamed optimizer after its class: keep the
                # plain class's default ("adam", not "introspectable_adam"),
                # so variable paths and state trees match the plain optimizer's.
                kwargs["name"] = _keras_private.default_name(base)
            # Log keys drop the counter Keras appends ("sgd_1"), but only to
            # names Keras chose.
            self.__dict__["_introspect_default_name"] = defaulted
        # Keras's own constructor sets `loss_scale_factor` too: no wrapper yet.
        self.__dict__["_introspect_constructing"] = True
        try:
            super().__init__(*args, **kwargs)
        finally:
            del self.__dict__["_introspect_constructing"]

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if (
            name == _keras_private.WRAPPING_SIGNAL
            and value is None
            and "_introspect_constructing" not in self.__dict__
        ):
            # A LossScaleOptimizer was just wrapped around this optimizer
            # (_keras_private.WRAPPING_SIGNAL): it checks files before it loads.
            _keras_private.hook_wrapper_loads(self)

    def __reduce__(self) -> Any:
        base = type(self).__dict__.get("_introspect_base")
        reduced = super().__reduce__()
        if base is None:
            return reduced
        # Keras pickles through `type(self)._unpickle_model`, found by class
        # name; a class made by `introspectable()` is found through its base.
        return (_unpickle, (base, *reduced[1]))

    if _LIST_CACHE_IN_VARIABLES:  # elsewhere Keras's own property lists the same

        @property
        def variables(self) -> list[Any]:
            return self._listed_variables()

    def _check_wrapper_load(self, wrapper: Any, store: WeightsStore) -> None:
        """Checks a file before ``wrapper`` (a LossScaleOptimizer around this one) loads it.

        Called by the wrapper's ``load_own_variables`` before it assigns
        anything (``_keras_private.CheckedWrapperLoad``).
        """
        _loss_scale.check_wrapper_load(self, self._ensure_introspection_state(), wrapper, store)

    def _listed_variables(self) -> list[Any]:
        """``variables``: the plain optimizer's, and on JAX the state's after them."""
        plain = self._plain_variables()
        state = self.__dict__.get(STATE_ATTRIBUTE)
        if _LIST_CACHE_IN_VARIABLES and state is not None:
            return [*plain, *state.all_variables()]
        return plain

    def _plain_variables(self) -> list[Any]:
        """Exactly the variables of the plain Keras optimizer, in its order."""
        return list(super().variables)

    def set_weights(self, weights: Any) -> None:
        """Keras's ``set_weights``, which also takes the state ``variables`` lists.

        Keras assigns ``weights`` to the plain optimizer's variables only (and
        ignores any beyond them). On JAX ``optimizer.variables`` lists the
        cached rate after those, so ``b.set_weights(a.variables)`` must assign
        it too, or ``b`` would derive the rate instead of holding ``a``'s.
        """
        weights = list(weights)
        plain = len(self._plain_variables())
        listed = self._listed_variables()[plain:]
        extra = weights[plain:] if len(weights) == plain + len(listed) else []
        for variable, weight in zip(listed, extra, strict=False):
            if tuple(variable.shape) != tuple(np.shape(weight)):
                raise ValueError(
                    f"Optimizer variable {variable.path} has shape {tuple(variable.shape)} "
                    f"not compatible with provided weight shape {tuple(np.shape(weight))}."
                )
        super().set_weights(weights)
        for variable, weight in zip(listed, extra, strict=False):
            variable.assign(weight)

    def _ensure_introspection_state(self) -> AppliedRateState:
        """The state object, created on first need (build or load).

        A method, not a property: Keras's saving walks every attribute, and the
        state must be reachable under exactly one name.
        """
        state = self.__dict__.get(STATE_ATTRIBUTE)
        if state is None:
            state = AppliedRateState(self)
            if _checkpoint is not None:
                state.attach_manifest_record(_checkpoint.ManifestRecord(state))
            # Attribute assignment makes it a named tf.train.Checkpoint
            # dependency (restored even when attached after `restore()`) and
            # a group of its own in .keras / .weights.h5 files.
            setattr(self, STATE_ATTRIBUTE, state)
        return state

    @property
    def current_learning_rate(self) -> Any:
        """The learning rate the last applied update used, as a scalar tensor.

        Unlike ``optimizer.learning_rate`` (the rate the *next* update will use,
        re-evaluated on every read), this is the value the most recent update
        actually applied, cached on the device by that update. Before any
        update it is the rate the first update will use. Gradient-accumulation
        micro-steps and steps skipped by a ``LossScaleOptimizer`` leave it
        unchanged. Reading it returns a snapshot tensor, never the variable:
        ``float(...)`` works in eager mode (also under a ``tf.distribute``
        strategy), and inside a ``tf.function`` it is ordered after any
        ``apply_gradients`` earlier in the same function.

        Examples:
            >>> import keras, introspect_opt
            >>> schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 1, 0.5)
            >>> opt = introspect_opt.IntrospectableSGD(learning_rate=schedule)
            >>> w = keras.Variable([1.0])
            >>> for _ in range(3):
            ...     _ = opt.apply_gradients([(keras.ops.ones((1,)), w)])
            >>> round(float(opt.current_learning_rate), 6)  # update 3 applied s(2)
            0.025
            >>> round(float(opt.learning_rate), 6)  # update 4 will apply s(3)
            0.0125
        """
        state = self.__dict__.get(STATE_ATTRIBUTE)
        count = self.iterations
        core = None if state is None else state.core()
        if core is None:
            # Not built yet: the rate a loaded file recorded, if it belongs to
            # the restored step counter, else the rate derived from it.
            pending = None
            if state is not None and not _keras_private.is_traced(count):
                pending = _queue.pending_rate(state, count)
            value = self._derived_rate(count) if pending is None else pending
            return ops.copy(ops.cast(value, rate_dtype(self, value)))
        rate_var, count_var = core
        count = ops.cast(count, count_var.dtype)
        cached = ops.equal(count_var, count)

        def read_cache() -> Any:
            return ops.copy(rate_var)

        def derive() -> Any:
            return ops.copy(ops.cast(self._derived_rate(count), rate_var.dtype))

        if _keras_private.is_traced(cached):  # tf.function, XLA, jax.jit
            return ops.cond(cached, read_cache, derive)
        return read_cache() if bool(cached) else derive()  # only the branch needed

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        for feature in features():  # what they change in the optimizer stays out
            feature.adjust_config(self, config)
        return config

    def _derived_rate(self, update_count: Any) -> Any:
        """The rate the last update applied (or the first will), recomputed.

        With ``gradient_accumulation_steps=k`` Keras evaluates the schedule at
        the raw micro-step counter, so update ``n`` used ``lr(n*k - 1)``.
        """
        k = self.gradient_accumulation_steps or 1
        counter_dtype = _keras_private.raw_step_counter(self).dtype
        update_count = ops.cast(update_count, counter_dtype)
        step = ops.where(
            ops.greater(update_count, 0),
            ops.subtract(ops.multiply(update_count, k), 1),
            ops.cast(k - 1, counter_dtype),
        )
        return _keras_private.learning_rate_at(self, step)

    def build(self, variables: Any) -> None:
        if self.built:
            return
        # Keras builds in the model's strategy scope (fit): refuse a foreign
        # one here already, as apply() would, before any variable is made.
        _refuse_foreign_strategy(self)
        self.__dict__["_introspect_building"] = True
        try:
            super().build(variables)
            state = self._ensure_introspection_state()
            state.create_variables(self, rate_dtype(self, self.learning_rate))
        finally:
            self.__dict__["_introspect_building"] = False
        applied = _queue.apply_pending(self, state)
        if applied is not None and _checkpoint is not None:
            _checkpoint.applied(self, state, *applied)

    def apply(self, grads: Any, trainable_variables: Any = None) -> Any:
        # Before Keras changes anything (weight decay comes first).
        _refuse_foreign_strategy(self)
        if trainable_variables is not None and not getattr(self, "built", False):
            # As Keras's apply() would next, so that features created at build
            # see this first update from its start too.
            trainable_variables = list(trainable_variables)
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
            self.built = True
        return super().apply(grads, trainable_variables)

    def _apply_weight_decay(self, variables: Any) -> None:
        # Keras calls this right before _backend_update_step, with the same
        # variables (_keras_private.WEIGHT_DECAY_HOOK). While a feature watches
        # each variable's own update, the decay moves into that variable's turn.
        state = self.__dict__.get(STATE_ATTRIBUTE)
        if state is not None and self._defers_decay() and state.watching(self):
            return
        super()._apply_weight_decay(variables)

    def _defers_decay(self) -> bool:
        """Whether watched updates move the decay into each variable's turn.

        Not when a subclass of the user's replaces the decay (overrides
        ``_apply_weight_decay`` below this class): Keras calls theirs, and it
        runs where Keras calls it, once (the update norm then starts after it).
        """
        hook = _keras_private.WEIGHT_DECAY_HOOK
        return getattr(type(self), hook) is getattr(IntrospectableOptimizer, hook)

    def _backend_update_step(
        self, grads: Any, trainable_variables: Any, learning_rate: Any
    ) -> None:
        # Keras calls this once per applied update, with the very value it
        # passes to every `update_step` (see _keras_private.UPDATE_STEP_HOOK).
        # (JAX also calls it on accumulation micro-steps, then reverts every
        # variable in `optimizer.variables`, the cache included.)
        rate_dtype(self, learning_rate)  # a clear error before Keras's own
        state = self._ensure_introspection_state()
        grads, trainable_variables = list(grads), list(trainable_variables)
        # Keras's update step below this class, as plain Keras would pick it: on
        # torch the ready-made classes extend Keras's fused classes, whose step
        # never calls `update_step` or the assignment methods, and which plain
        # Keras uses only for its own exact classes; a user's subclass that
        # defines those gets, as under plain Keras, the generic step.
        keras_step: Callable[[Any, Any, Any], None] = super()._backend_update_step
        if _keras_private.fused_step_skips_user_methods(type(self), IntrospectableOptimizer):
            keras_step = functools.partial(_keras_private.generic_update_step, self)
        watching = state.watching(self)
        observed: dict[str, list[Any]] = {}
        if watching:
            observed = {f.name: [] for f in watching}

            def before_variable(grad: Any, variable: Any) -> Any:
                return [f.before_variable(self, state, grad, variable) for f in watching]

            def after_variable(grad: Any, variable: Any, looked: Any, change: Any) -> Any:
                seen = [
                    f.after_variable(self, state, grad, variable, learning_rate, held, change)
                    for f, held in zip(watching, looked, strict=True)
                ]
                for feature, value in zip(watching, seen, strict=True):
                    observed[feature.name].append(value)
                return seen

            # Keras's own decay (unless a subclass replaced it: then it ran
            # where Keras calls it) and update step, given one variable at a time.
            decay = getattr(super(), _keras_private.WEIGHT_DECAY_HOOK)
            _turns.update_one_variable_at_a_time(
                self,
                grads,
                trainable_variables,
                learning_rate,
                decay if self._defers_decay() else None,
                keras_step,
                before_variable,
                after_variable,
                self._own_scalars_advanced_per_call(),
                _keras_private.update_step_is_keras_own(type(self), IntrospectableOptimizer),
            )
        else:
            keras_step(grads, trainable_variables, learning_rate)
        core = state.core()
        if core is None:  # pragma: no cover - build() and introspect() create them
            raise RuntimeError(
                f"{type(self).__name__} '{self.name}' applied an update before its "
                "introspection state existed; please report this with your Keras version."
            )
        rate_var, count_var = core
        count = ops.add(ops.cast(self.iterations, count_var.dtype), ops.cast(1, count_var.dtype))
        rate = ops.cast(learning_rate, rate_var.dtype)
        state.record(self, Update(grads, trainable_variables, rate, count, observed))

    def _own_scalars_advanced_per_call(self) -> list[Any]:
        """The optimizer's own scalar variables that an update step may advance.

        Everything but its step counter, its rate and the slots of model
        variables (as the manifest attributes them): Nadam's ``u_product``,
        for instance. Empty for most optimizers.
        """
        variables = self._plain_variables()
        cached = self.__dict__.get("_introspect_own_scalars")
        if cached is not None and cached[0] == len(variables):
            return list(cached[1])
        from introspect_opt._keras3.persistence import manifest as _manifest

        built_for = _keras_private.variables_built_for(self)
        skip = {id(_keras_private.raw_step_counter(self)), id(_keras_private.rate_variable(self))}
        slots = _manifest.attribute(variables, built_for)
        own = [
            v
            for v, slot in zip(variables, slots, strict=True)
            if slot.owner is None and slot.shape == () and id(v) not in skip
        ]
        self.__dict__["_introspect_own_scalars"] = (len(variables), own)
        return own

    # Keras's update steps change a variable only through these three
    # (_keras_private.ASSIGNMENT_HOOKS); a variable's watched turn sees the
    # change there, as the optimizer computed it (see _keras3.turns).
    def assign(self, variable: Any, value: Any) -> None:
        _turns.observe(self, variable, value, "assign")
        super().assign(variable, value)

    def assign_add(self, variable: Any, value: Any) -> None:
        _turns.observe(self, variable, value, "assign_add")
        super().assign_add(variable, value)

    def assign_sub(self, variable: Any, value: Any) -> None:
        _turns.observe(self, variable, value, "assign_sub")
        super().assign_sub(variable, value)

    def save_own_variables(self, store: WeightsStore) -> None:
        _persistence.save(self, self._ensure_introspection_state(), store)

    def load_own_variables(self, store: WeightsStore) -> None:
        _persistence.load(self, self._ensure_introspection_state(), store)

    def _manifest_to_save(self) -> Any:
        """The manifest a save writes next to the state (None: none fits; see persistence)."""
        return _persistence.manifest_to_save(self, self._ensure_introspection_state())

    if keras.backend.backend() == "tensorflow":

        def _trackable_children(self, *args: Any, **kwargs: Any) -> Any:
            # tf.train.Checkpoint lists an object's children before it restores
            # them (no arguments) or saves them (_keras_private.TF_CHILDREN_HOOK).
            if self.__dict__.get("_introspect_building"):
                return super()._trackable_children(*args, **kwargs)
            state = self._ensure_introspection_state()  # its manifest restores first
            children = super()._trackable_children(*args, **kwargs)
            if not args and not kwargs:  # restoring
                _queue.restore_started(state)
                return children
            return _checkpoint.children_to_save(self, state, children)


def _unpickle(optimizer_class: type, *args: Any) -> Any:
    """Rebuilds a pickled instance of ``introspectable(optimizer_class)``."""
    pending = [IntrospectableOptimizer]
    while pending:
        cls = pending.pop()
        if cls.__dict__.get("_introspect_base") is optimizer_class:
            return _keras_private.unpickle(cls, *args)
        pending += cls.__subclasses__()
    raise TypeError(
        f"Cannot unpickle an introspectable {optimizer_class.__qualname__}: call "
        f"introspect_opt.introspectable({optimizer_class.__qualname__}) in this process first."
    )
