"""The per-update mechanism for tf_keras (Keras 2) optimizers, new and legacy.

One mixin per optimizer family, placed before the tf_keras class in the bases:

* the cached-rate state (two scalar variables, see ``_tf_keras.state``),
  created where the plain optimizer creates its own variables, in the scope of
  the strategy it was created under, as a named checkpoint dependency outside
  ``optimizer.variables``: a new optimizer's at construction (as its step
  counter), a legacy optimizer's at its first update, restore or read (as its
  step counter, so TF1-style graph code can create the optimizer eagerly and
  use it inside a ``tf.Graph``);
* on every applied update: one write of the learning rate the update applied,
  taken from the very tensor the update read (see ``_tf_keras.compat`` for
  the hook of each family), and of ``iterations`` after it;
* ``current_learning_rate``: a snapshot of that value, or, while no update or
  file recorded one, the rate derived from the step counter;
* strict, all-or-nothing loading (``_tf_keras.persistence``).

Everything else (constructor, config, slots, the update arithmetic) is the
plain tf_keras class's, so weights stay bit-identical.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import tensorflow as tf

from introspect_opt._common.names import MANIFEST_CHILD, STATE_ATTRIBUTE
from introspect_opt._common.protocols import WeightsStore
from introspect_opt._tf_keras import compat as private
from introspect_opt._tf_keras import manifest as manifest
from introspect_opt._tf_keras import persistence as persistence
from introspect_opt._tf_keras.state import AppliedRateState

if TYPE_CHECKING:
    _Base = Any
else:
    _Base = object


def _attach_state(optimizer: Any, rate_dtype: Any) -> AppliedRateState:
    """Creates the state next to the optimizer's own variables, as a named dependency."""
    with private.strategy_scope(optimizer):
        state = AppliedRateState(rate_dtype)
    # Its checkpoint child that saves the manifest (a tracked attribute).
    setattr(state, MANIFEST_CHILD, manifest.ManifestRecord(optimizer))
    # The new optimizer (an AutoTrackable) tracks attributes by name; the legacy
    # one (a plain Trackable) is told explicitly.
    optimizer.__dict__[STATE_ATTRIBUTE] = state
    private.track(optimizer, state, STATE_ATTRIBUTE)
    return state


class _IntrospectionMixin(_Base):
    """What both families share: the read, the restore hook, the checks."""

    # The public tf_keras class an introspectable class extends; set on each
    # introspectable class itself (not inherited by user subclasses of it).
    _introspect_base: type
    # Checkpoint children whose restore restores ``iterations`` (per family).
    _introspect_step_children: frozenset[str] = frozenset()
    # How to create the slots, for errors about loading into an unbuilt optimizer.
    _introspect_build_hint: str = ""

    @property
    def current_learning_rate(self) -> Any:
        """The learning rate the last applied update used, as a scalar tensor.

        Unlike ``optimizer.learning_rate`` / ``lr`` (for a legacy optimizer, or
        a float rate a callback just set: the rate the *next* update will
        use), this is the value the most recent update actually applied,
        cached on the device by that update. Before any update it is the rate
        the first update will use; steps a ``LossScaleOptimizer`` skips leave
        it unchanged. Reading it returns a snapshot tensor, never the
        variable: ``float(...)`` works in eager mode (also under a
        ``tf.distribute`` strategy), and inside a ``tf.function`` it is
        ordered after any ``apply_gradients`` earlier in the same function.
        After ``iterations`` was set below the count of the last update (e.g.
        ``optimizer.iterations.assign(0)``), it is derived from the counter
        again, as before any update.

        Examples:
            >>> import tensorflow as tf, tf_keras
            >>> from introspect_opt.tf_keras import IntrospectableLegacySGD
            >>> schedule = tf_keras.optimizers.schedules.ExponentialDecay(0.1, 1, 0.5)
            >>> opt = IntrospectableLegacySGD(learning_rate=schedule)
            >>> w = tf.Variable([1.0])
            >>> for _ in range(3):
            ...     _ = opt.apply_gradients([(tf.ones((1,)), w)])
            >>> round(float(opt.current_learning_rate), 6)  # update 3 applied s(2)
            0.025
            >>> round(float(opt._decayed_lr(tf.float32)), 6)  # update 4 will apply s(3)
            0.0125
        """
        state = self._introspect_state_for_read()
        return state.read(self._derived_learning_rate, self.iterations)

    def _introspect_state(self) -> AppliedRateState:
        """The cached-rate state, created now (in the current graph) if it does not exist."""
        state = self.__dict__.get(STATE_ATTRIBUTE)
        if state is None:
            state = _attach_state(self, self._introspect_rate_dtype())
        return state

    def _introspect_state_for_read(self) -> AppliedRateState:
        """The state, and whatever the derivation reads, created before a read."""
        return self._introspect_state()

    def _introspect_rate_dtype(self) -> Any:
        raise NotImplementedError

    def _derived_learning_rate(self) -> Any:
        """The rate the last update applied (or the first will), from the step counter."""
        raise NotImplementedError

    def _derivation_step(self) -> Any:
        # Update n ran with the counter at n - 1; before any update, the first
        # update will run at the counter's current value (normally 0).
        iterations = tf.cast(self.iterations, tf.int64)
        return tf.maximum(iterations - 1, tf.zeros_like(iterations))

    def _introspect_plain_variables(self) -> list[Any]:
        """Exactly the variables of the plain tf_keras optimizer, in its order."""
        raise NotImplementedError

    def _lookup_dependency(self, name: str, cached_dependencies: Any = None) -> Any:
        # A checkpoint restore that restores `iterations` makes the cache stale,
        # unless the same restore also brings the cache: TensorFlow asks for
        # every child first and assigns all values afterwards, so a cache in
        # the checkpoint overwrites this mark. (Checked against TF 2.21.)
        if private.is_restore_lookup(cached_dependencies):
            state = self.__dict__.get(STATE_ATTRIBUTE)
            if state is not None and name in self._introspect_step_children:
                self._introspect_remember_before_restore(state)
                state.forget()
            if self._introspect_prepare_restore():
                cached_dependencies = None  # listed before some children existed
        return super()._lookup_dependency(name, cached_dependencies)

    def _introspect_prepare_restore(self) -> bool:
        """Creates what a restore should find; True if the listed children may be stale."""
        return False

    def _introspect_remember_before_restore(self, state: AppliedRateState) -> None:
        """Keeps the cache as it was before this restore marks it stale (see refuse)."""
        uid = private.restore_uid(self)
        saved = self.__dict__.get("_introspect_rollback")
        with tf.init_scope():
            if tf.executing_eagerly() and (saved is None or saved[0] != uid):
                self.__dict__["_introspect_rollback"] = (uid, state.values())

    def _introspect_refuse_restore(self, uid: int) -> None:
        """Undoes what checkpoint restore ``uid`` did before its manifest refused it."""
        saved = self.__dict__.pop("_introspect_rollback", None)
        state = self.__dict__.get(STATE_ATTRIBUTE)
        if state is not None and saved is not None and saved[0] == uid:
            state.assign_values(saved[1])
        for trackable in (self, state):
            private.drop_deferred_restores(trackable, uid)

    def _introspect_accept_restore(self, uid: int) -> None:
        """Checkpoint restore ``uid`` carries this optimizer's class and layout."""
        self.__dict__.pop("_introspect_rollback", None)

    def set_weights(self, weights: Any) -> None:
        """Sets the optimizer's variables (``iterations`` first), all or nothing.

        Same as the plain tf_keras method, but every value is checked (count,
        shapes, dtypes) before anything is assigned, and a mismatch raises
        ``RuntimeError`` (which tf_keras's HDF5 ``load_model`` does not turn
        into a log message, as it does for ``ValueError``). The cached rate is
        then derived from the restored step counter.

        Args:
            weights: One value per variable of the plain optimizer, in order.

        Raises:
            RuntimeError: The values do not fit this optimizer's variables.

        Examples:
            >>> import tensorflow as tf
            >>> from introspect_opt.tf_keras import IntrospectableSGD
            >>> opt = IntrospectableSGD(0.1, momentum=0.9)
            >>> opt.build([tf.Variable([1.0, 2.0])])
            >>> opt.set_weights([3, [0.5, 0.5]])
            >>> int(opt.iterations)
            3
        """
        if not self._introspect_is_built():
            super().set_weights(weights)  # tf_keras's own error
            return
        persistence.set_weights(self, weights)

    def _introspect_is_built(self) -> bool:
        raise NotImplementedError


class NewIntrospectionMixin(_IntrospectionMixin):
    """Adds ``current_learning_rate`` to the tf_keras optimizer it precedes in the MRO.

    For subclasses of ``tf_keras.optimizers.Optimizer`` (the default
    ``tf.keras.optimizers.*`` under ``TF_USE_LEGACY_KERAS=1``).
    """

    _introspect_step_children = private.NEW_STEP_CHILDREN
    _introspect_build_hint = (
        "build it for the model first, `model.optimizer.build(model.trainable_variables)`, "
        "then load again (tf_keras's `load_model` builds it for you)."
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("mesh") is not None:
            raise ValueError(
                f"{type(self).__name__} received mesh={kwargs['mesh']!r}: introspect_opt "
                "does not support tf_keras's DTensor mode. Drop `mesh` (use a "
                "tf.distribute strategy) or use the plain tf_keras optimizer."
            )
        super().__init__(*args, **kwargs)
        if private.is_dtensor(self):
            raise ValueError(
                f"{type(self).__name__} was created under a DTensor strategy, which "
                "introspect_opt does not support. Use a tf.distribute strategy or the "
                "plain tf_keras optimizer."
            )
        # Created with the step counter, which tf_keras's new optimizer
        # creates here too. `learning_rate` is the variable every update reads:
        # the schedule's `_current_learning_rate` or the float rate's variable.
        self._introspect_state()

    def _introspect_rate_dtype(self) -> Any:
        source = private.new_learning_rate_source(self)
        rate = self.learning_rate if isinstance(source, private.LearningRateSchedule) else source
        return rate.dtype

    def _distributed_apply_gradients_fn(
        self, distribution: Any, grads_and_vars: Any, **kwargs: Any
    ) -> Any:
        # See _tf_keras.compat.NEW_UPDATE_HOOK: runs once per applied update,
        # after every variable update (which read this very variable).
        iteration = super()._distributed_apply_gradients_fn(distribution, grads_and_vars, **kwargs)
        self._introspect_state().record(tf.identity(self.learning_rate), self.iterations)
        return iteration

    def _derived_learning_rate(self) -> Any:
        source = private.new_learning_rate_source(self)
        if isinstance(source, private.LearningRateSchedule):
            return source(self._derivation_step())
        return tf.identity(source)

    def _introspect_plain_variables(self) -> list[Any]:
        return list(super().variables)

    def _introspect_is_built(self) -> bool:
        return private.new_is_built(self)

    def build(self, var_list: Any) -> None:
        """Creates the optimizer's variables for ``var_list``, as the tf_keras class does.

        Also remembers ``var_list``: the manifest records which model variable
        each slot belongs to (see ``_tf_keras.manifest``).

        Args:
            var_list: The model variables to create slots for.

        Examples:
            >>> import tensorflow as tf
            >>> from introspect_opt.tf_keras import IntrospectableAdam
            >>> opt = IntrospectableAdam()
            >>> opt.build([tf.Variable([1.0, 2.0], name="w")])
            >>> [v.name for v in opt.variables]
            ['iteration:0', 'm/w:0', 'v/w:0']
        """
        if not self._introspect_is_built():
            var_list = list(var_list)
            manifest.record_built_for(self, var_list)
        super().build(var_list)

    def add_variable_from_reference(
        self,
        model_variable: Any,
        variable_name: str,
        shape: Any = None,
        initial_value: Any = None,
    ) -> Any:
        """Creates a slot for ``model_variable``, as the tf_keras class does, and records it.

        Args:
            model_variable: The model variable the slot belongs to.
            variable_name: The slot's role (``"m"``, ``"velocity"`` ...).
            shape: The slot's shape; ``model_variable``'s by default.
            initial_value: The slot's initial value; zeros by default.

        Returns:
            The slot variable.

        Examples:
            >>> import tensorflow as tf
            >>> from introspect_opt.tf_keras import IntrospectableSGD
            >>> opt = IntrospectableSGD()
            >>> slot = opt.add_variable_from_reference(tf.Variable([1.0], name="w"), "extra")
            >>> slot.name, slot.numpy().tolist()
            ('extra/w:0', [0.0])
        """
        variable = super().add_variable_from_reference(
            model_variable, variable_name, shape=shape, initial_value=initial_value
        )
        manifest.record_reference(self, variable, model_variable, variable_name)
        return variable

    def _introspect_refuse_restore(self, uid: int) -> None:
        super()._introspect_refuse_restore(uid)
        # Slots by position (`_variables/N`) that wait for `build`.
        private.drop_deferred_restores(private.new_variable_list(self), uid)

    def save_own_variables(self, store: WeightsStore) -> None:
        """Saves the optimizer's state to a ``.keras`` / ``.weights.h5`` store.

        Writes exactly the plain optimizer's entries, and the cached rate in a
        group of its own beside them (``_introspection_state``), which plain
        tf_keras optimizers do not read.

        Args:
            store: The entry group tf_keras's saving code hands the optimizer.

        Raises:
            RuntimeError: A checkpoint restored slot values into this optimizer
                before it was built: they exist only once it is built.

        Examples:
            >>> import os, tempfile, h5py, tf_keras
            >>> from introspect_opt.tf_keras import IntrospectableSGD
            >>> model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(2,))])
            >>> model.compile(IntrospectableSGD(0.1, momentum=0.9), loss="mse")
            >>> path = os.path.join(tempfile.mkdtemp(), "m.weights.h5")
            >>> model.save_weights(path)  # calls save_own_variables
            >>> with h5py.File(path) as f:
            ...     sorted(f["optimizer"])
            ['_introspection_state', 'vars']
        """
        pending = private.new_pending_slot_restores(self)
        if pending and not self._introspect_is_built():
            raise RuntimeError(
                f"{persistence.describe(self)} holds {pending} slot values restored from a "
                "checkpoint that wait for the optimizer to be built; saving now would drop "
                "them (plain tf_keras does, silently). Build it first: "
                "`model.optimizer.build(model.trainable_variables)`, then save."
            )
        super().save_own_variables(store)
        persistence.save_keras_entries(self, store)

    def load_own_variables(self, store: WeightsStore) -> None:
        """Loads the optimizer's state from a ``.keras`` / ``.weights.h5`` store.

        Every entry (the optimizer's variables and the cached rate) is checked
        before anything is assigned. A file from the plain optimizer loads too:
        the rate is then derived from the restored step counter.

        Args:
            store: The entry group tf_keras's loading code hands the optimizer.

        Raises:
            RuntimeError: The file's entries do not fit this optimizer (another
                class, other arguments, another model, not built yet, or
                damaged). Nothing was assigned.

        Examples:
            >>> import os, tempfile, tf_keras
            >>> from introspect_opt.tf_keras import IntrospectableSGD
            >>> model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(2,))])
            >>> model.compile(IntrospectableSGD(0.1), loss="mse")
            >>> path = os.path.join(tempfile.mkdtemp(), "m.weights.h5")
            >>> model.save_weights(path)
            >>> model.load_weights(path)  # calls load_own_variables
        """
        persistence.load_keras_entries(self, store)


class LegacyIntrospectionMixin(_IntrospectionMixin):
    """Adds ``current_learning_rate`` to the legacy tf_keras optimizer it precedes.

    For subclasses of ``tf_keras.optimizers.legacy.Optimizer`` (``OptimizerV2``,
    ``tf.keras.optimizers.legacy.*``). The rate is cached in ``floatx`` (the
    dtype of the variables it is applied to, normally).
    """

    _introspect_step_children = private.LEGACY_STEP_CHILDREN
    _introspect_build_hint = (
        "tf_keras's `load_model` creates a legacy optimizer's slots before loading "
        "them; a tf.train.Checkpoint restores slots whenever they are created."
    )

    # No state at construction: OptimizerV2 creates its step counter,
    # hyperparameters and slots lazily, in the graph of the first update
    # (`_create_all_weights`), so that an optimizer created eagerly can be used
    # inside a `tf.Graph` (TF1-style code with `tf.compat.v1.Session`). The
    # state follows its step counter: created with it at the first update, or
    # at a restore or read before that.

    def _create_all_weights(self, var_list: Any) -> None:
        # apply_gradients calls this on every update, under `tf.init_scope()`
        # and the optimizer's name scope, before anything reads the variables.
        var_list = list(var_list)
        manifest.record_built_for(self, var_list)
        super()._create_all_weights(var_list)
        self._introspect_state()

    def _create_or_restore_slot_variable(
        self,
        slot_variable_position: Any,
        slot_name: str,
        variable: Any,
        slot_variable_shape: Any = None,
    ) -> Any:
        # See _tf_keras.compat.LEGACY_SLOT_RESTORE_HOOK: a restore creates the
        # slots of an optimizer that has none yet, eagerly, while it walks the
        # checkpoint, before the manifest is checked. Remember which, so that a
        # refusal can remove them.
        try:
            self.get_slot(variable, slot_name)
            existed = True
        except KeyError:
            existed = False
        slot = super()._create_or_restore_slot_variable(
            slot_variable_position, slot_name, variable, slot_variable_shape
        )
        if slot is not None and not existed:
            uid = private.position_restore_uid(slot_variable_position)
            created: tuple[int, list[Any]] | None = self.__dict__.get("_introspect_restored_slots")
            if created is None or created[0] != uid:
                created = self.__dict__["_introspect_restored_slots"] = (uid, [])
            created[1].append((variable, slot_name, manifest.record_built_for(self, [variable])))
        return slot

    def _introspect_refuse_restore(self, uid: int) -> None:
        super()._introspect_refuse_restore(uid)
        private.legacy_drop_deferred_slot_restores(self, uid)
        created = self.__dict__.pop("_introspect_restored_slots", None)
        if created is not None and created[0] == uid:
            for variable, slot_name, added in created[1]:
                private.legacy_remove_slot(self, variable, slot_name)
                manifest.forget_built_for(self, added)

    def _introspect_accept_restore(self, uid: int) -> None:
        super()._introspect_accept_restore(uid)
        self.__dict__.pop("_introspect_restored_slots", None)

    def _introspect_create_counter_and_state(self) -> None:
        """Creates the step counter, hyperparameters and state, if missing (not the slots)."""
        private.legacy_create_counter_and_hypers(self)
        if self.__dict__.get(STATE_ATTRIBUTE) is None:
            with tf.name_scope(private.legacy_name(self)), tf.init_scope():
                self._introspect_state()

    def _introspect_state_for_read(self) -> AppliedRateState:
        # Everything the read (and its derivation, inside a `tf.cond` in graph
        # code) uses must exist before it: no variable can be created in a
        # branch. Reading `optimizer.iterations` or `lr` creates them too.
        self._introspect_create_counter_and_state()
        return self._introspect_state()

    def _introspect_prepare_restore(self) -> bool:
        # A restore before the first update: create the step counter, the
        # hyperparameters and the state now, so that they are restored at once
        # (and saved by any save before the first update), not kept waiting
        # inside TensorFlow. TensorFlow lists the children once per object,
        # maybe before this created them: every lookup looks afresh.
        self._introspect_create_counter_and_state()
        return True

    def _introspect_rate_dtype(self) -> Any:
        # The legacy update computes the rate in each variable's dtype; the
        # cache takes floatx, the dtype of a model's variables by default.
        return tf.as_dtype(private.floatx())

    def _distributed_apply(
        self, distribution: Any, grads_and_vars: Any, apply_state: Any, name: Any = None
    ) -> Any:
        # See _tf_keras.compat.LEGACY_UPDATE_HOOK: `apply_state` holds the very
        # rate tensors the variable updates read, computed before `iterations`
        # moved. (A subclass that keeps no `lr_t` there: the same computation,
        # done here before the update increments the counter.)
        state = self._introspect_state()
        rate = private.legacy_rate_in_apply_state(apply_state, state.rate_dtype)
        if rate is None:
            rate = tf.identity(private.legacy_decayed_lr(self, state.rate_dtype))
        if tf.executing_eagerly():
            result = super()._distributed_apply(distribution, grads_and_vars, apply_state, name)
            state.record(rate, self.iterations)
            return result
        # Graph code: a TF1 graph orders nothing by itself (a tf.function
        # would), so the order is explicit: the rate is read before the
        # update moves `iterations`, the cache is written after it.
        with tf.control_dependencies([rate]):
            result = super()._distributed_apply(distribution, grads_and_vars, apply_state, name)
        applied = tf.group(result)
        with tf.control_dependencies([applied]):
            writes = state.record(rate, self.iterations)
        return tf.group(applied, *writes)

    def _derived_learning_rate(self) -> Any:
        # Mirrors the `lr_t` the update reads (OptimizerV2._decayed_lr, except
        # for legacy Nadam), at the counter of the last update.
        dtype = self._introspect_state().rate_dtype
        step = tf.cast(self._derivation_step(), dtype)
        rate = private.legacy_rate_hyper(self, dtype)
        if isinstance(rate, private.LearningRateSchedule):
            rate = tf.cast(rate(step), dtype)
        decay = private.legacy_initial_decay(self)
        if decay > 0.0 and not private.legacy_rate_ignores_decay(self):
            rate = rate / (1.0 + tf.cast(decay, dtype) * step)
        return rate

    def _introspect_plain_variables(self) -> list[Any]:
        return list(self.weights)

    def _introspect_is_built(self) -> bool:
        return True  # set_weights checks the count against what exists
