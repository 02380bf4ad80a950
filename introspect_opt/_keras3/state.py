"""The cached applied rate: the state every introspectable Keras 3 optimizer carries.

The state is one small object attached to the optimizer (attribute
``_introspection_state``) instead of variables in ``optimizer.variables``.
Plain Keras optimizers refuse a ``.keras`` / ``.weights.h5`` entry whose
variable count differs from theirs, and ``tf.train.Checkpoint`` matches
``optimizer.variables`` by position; keeping the count and the positions
exactly those of the plain optimizer is what makes files interchangeable in
both directions. The state is saved as a group of its own (``.keras`` /
``.weights.h5``) and as a named dependency (``tf.train.Checkpoint``), both of
which a plain optimizer ignores.

Core: two scalar variables, the rate the last update applied and the update
count it belongs to. Everything else (the plateau multiplier, the rate
history, diagnostics) is a feature of this state (``features``), created on
request; this module imports none of them.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from introspect_opt._common.names import (
    CORE_KEYS,
    COUNT_KEY,
    MANIFEST_CHILD,
    MANIFEST_KEY,
    NO_UPDATE,
    RATE_KEY,
    STATE_MODULE_NAME,
)
from introspect_opt._common.protocols import WeightsStore
from introspect_opt._keras3 import compat as _keras_private
from introspect_opt._keras3 import dormant as _dormant
from introspect_opt._keras3.features import Entries, Feature, Update, feature_named, features
from introspect_opt._keras3.host import host_array

if TYPE_CHECKING or keras.backend.backend() != "tensorflow":
    _Trackable = object
else:  # pragma: no branch - the TensorFlow backend is the one CI runs first.
    import tensorflow as tf

    # A tf.Module is tracked by name by tf.train.Checkpoint (including deferred
    # restoration into an optimizer that is built later).
    _Trackable = tf.Module


class _Requests:
    """Features asked for before the state's variables exist: name -> options.

    A plain object around the dict: tf.Module would track a dict attribute
    as a checkpoint dependency.
    """

    def __init__(self) -> None:
        self.options: dict[str, dict[str, Any]] = {}


class AppliedRateState(_keras_private.KerasSaveable, _Trackable):
    """Holds the rate the last update applied and the update count it belongs to.

    ``update_count`` equals ``optimizer.iterations`` right after the update that
    wrote ``applied_learning_rate``. Whenever the two disagree (a file or
    checkpoint restored iterations but not the cache, or no update ran yet) the
    cached value is stale and the rate is derived from the schedule instead.
    """

    def __init__(self, owner: Any) -> None:
        if _Trackable is not object:
            super().__init__(name=STATE_MODULE_NAME)
        self.applied_learning_rate: Any = None
        self.update_count: Any = None
        for feature in features():
            for key in feature.keys:
                setattr(self, key, None)
        self.requested = _Requests()
        # The optimizer this state belongs to (a weak reference: no cycle,
        # and nothing Keras or TensorFlow would try to save).
        self.owner: Callable[[], Any] = weakref.ref(owner)
        # State read from a file before the optimizer was built (see
        # persistence.queue.Pending); applied by build().
        self.pending: Any = None
        # (weak reference to a Keras weights store, None or the reason it was
        # refused) once the LossScaleOptimizer wrapping the owner checked it:
        # the check runs once per load, and after a refusal the owner's own
        # load from that store refuses too (see persistence.loss_scale).
        self.wrapper_check: Any = None
        # Serialises creation of variables against reads from other threads
        # (a monitoring thread may read current_learning_rate during build).
        self.__dict__["_lock"] = threading.RLock()
        # Core variables, published together once both exist.
        self.__dict__["_core"] = None
        # Whether a TensorFlow function traced the update step: it keeps the
        # variables it captured (see _keras3.dormant).
        self.__dict__["traced"] = False

    def attach_manifest_record(self, record: Any) -> None:
        """Adds the checkpoint child that saves the manifest (TensorFlow; ``checkpoint``)."""
        setattr(self, MANIFEST_CHILD, record)

    def _trackable_children(self, *args: Any, **kwargs: Any) -> Any:
        # The manifest first: TensorFlow restores children in the order a save
        # listed them, and the manifest must refuse a checkpoint before the
        # cached rate is assigned.
        # A dormant variable (see _keras3.dormant) is no state: not saved, and not an
        # object that a restore must match (_lookup_dependency still finds it).
        children = {
            name: child
            for name, child in super()._trackable_children(*args, **kwargs).items()
            if not (_dormant.reshapable(child) and not _dormant.is_on(child))
        }
        record = children.pop(MANIFEST_CHILD, None)
        return children if record is None else {MANIFEST_CHILD: record, **children}

    def _obj_type(self) -> str:
        # Only selects the attribute skip-list Keras uses while walking this
        # object; "Optimizer" keeps the walk to our own attributes.
        return "Optimizer"

    def _lookup_dependency(self, name: str, cached_dependencies: Any = None) -> Any:
        # tf.train.Checkpoint asks for each child it holds by name: a feature
        # that files create (training state) is created here, so that a
        # checkpoint holding it restores it instead of dropping it.
        # (Only while restoring: TensorFlow passes the children it listed. A
        # lookup without them comes from tracking an attribute being set.)
        feature = next((f for f in features() if name in f.keys), None)
        if feature is not None and _dormant.reshapable(getattr(self, name, None)):
            return getattr(self, name)  # restored into, it is switched on
        owner = self.owner()
        if (
            _keras_private.is_restore_lookup(cached_dependencies)
            and feature is not None
            and feature.created_by_files
            and feature.options_for_checkpoint() is not None
            and owner is not None
            and self.has_variables
            and not self.has(feature.name)
        ):
            self.create(owner, feature.name, **(feature.options_for_checkpoint() or {}))
            cached_dependencies = None  # computed before it existed
        return super()._lookup_dependency(name, cached_dependencies)

    # --- variables ----------------------------------------------------------

    @property
    def has_variables(self) -> bool:
        return self.__dict__["_core"] is not None

    def core(self) -> tuple[Any, Any] | None:
        """(rate variable, count variable), or None before they exist."""
        return self.__dict__["_core"]  # type: ignore[no-any-return]

    def has(self, feature: str) -> bool:
        """Whether an opt-in feature is on: its variables exist, and hold values."""
        variable = getattr(self, feature_named(feature).keys[0], None)
        if variable is None:
            return False
        return not _dormant.reshapable(variable) or _dormant.is_on(variable)

    def hooked(self) -> list[Feature]:
        """The features whose variables exist, dormant or on: the step calls their hooks."""
        return [f for f in features() if getattr(self, f.keys[0], None) is not None]

    def active(self) -> list[Feature]:
        return [f for f in features() if self.has(f.name)]

    def is_current(self, optimizer: Any) -> bool:
        """Whether the cache belongs to the last update (read on the host)."""
        core = self.core()
        return core is not None and int(host_array(core[1])) == int(
            host_array(optimizer.iterations)
        )

    def all_variables(self) -> list[Any]:
        """Every variable of this state, in a fixed order (JAX carries these)."""
        if not self.has_variables:
            return []
        names = list(CORE_KEYS)
        for feature in self.active():
            names += feature.keys
        return [getattr(self, name) for name in names]

    def create_variables(self, optimizer: Any, rate_dtype: str) -> None:
        """Creates the two scalar variables, then every requested feature."""
        with self._lock:
            if self.has_variables:
                return
            rate = make_variable(optimizer, RATE_KEY, np.zeros((), dtype=rate_dtype))
            counter = _keras_private.raw_step_counter(optimizer)
            count = make_variable(optimizer, COUNT_KEY, np.full((), NO_UPDATE, counter.dtype))
            self.applied_learning_rate, self.update_count = rate, count
            self.__dict__["_core"] = (rate, count)  # readable from now on, both at once
            if _dormant.SUPPORTED:
                with _keras_private.eager_scope(), _keras_private.strategy_scope(optimizer):
                    for feature in features() if _dormant.usable() else []:
                        feature.create_dormant(optimizer, self)
            for feature in features():
                options = feature.options_for_checkpoint()
                waiting = _keras_private.checkpoint_waits_for(self, feature.keys[0])
                if feature.created_by_files and options is not None and waiting:
                    # A tf.train.Checkpoint restored before the build holds it: it
                    # is restored into the variable as soon as the variable exists.
                    self.requested.options.setdefault(feature.name, options)
            for feature in features():
                wanted = feature.wanted_by(optimizer)
                if wanted is not None:
                    self.requested.options.setdefault(feature.name, wanted)
            requested, self.requested.options = self.requested.options, {}
            for name, options in requested.items():
                self.create(optimizer, name, **options)

    def enable(self, optimizer: Any, name: str, **options: Any) -> bool:
        """Switches a feature on: the one way to do it.

        Its variables are created (or dormant ones switched on) now if the
        state's own exist, else when the optimizer is built. Returns whether
        new variables were created now (a function traced before would not
        update them until retraced).
        """
        with self._lock:
            if self.has(name):
                return False
            if self.has_variables:
                return self.create(optimizer, name, **options)
            self.requested.options[name] = options
            return False

    def create(self, optimizer: Any, name: str, **options: Any) -> bool:
        """Switches an opt-in feature on now (once; eagerly).

        Returns whether that created new variables (False: dormant ones were
        switched on, or the feature was on already).
        """
        feature = feature_named(name)
        with self._lock:
            if self.has(name):
                return False
            before = getattr(self, feature.keys[0], None)
            with _keras_private.eager_scope(), _keras_private.strategy_scope(optimizer):
                feature.create(optimizer, self, **options)
            return getattr(self, feature.keys[0], None) is not before

    def new_variable(self, optimizer: Any, key: str, initial: np.ndarray) -> Any:
        """The variable for entry ``key`` holding ``initial``: the dormant one if any.

        Called by :meth:`Feature.create` (eagerly, in the strategy's scope).
        """
        variable: Any = getattr(self, key, None)
        if _dormant.reshapable(variable):
            variable.assign(initial)
            return variable
        return make_variable(optimizer, key, initial)

    def drop(self, name: str) -> None:
        """Switches a feature off (to create it again, e.g. resized).

        Dormant variables are emptied, so that steps traced before still
        update the feature once it is switched on again.
        """
        with self._lock:
            for key in feature_named(name).keys:
                variable = getattr(self, key, None)
                if _dormant.reshapable(variable):
                    _dormant.switch_off(variable)
                else:
                    setattr(self, key, None)

    # --- per update -----------------------------------------------------------

    def watching(self, optimizer: Any) -> list[Feature]:
        """The features that watch each variable's own update (see ``Feature``)."""
        return [f for f in self.hooked() if f.watches_variables(optimizer, self)]

    def record(self, optimizer: Any, update: Update) -> None:
        """Writes the rate an update applied, then lets the features see it."""
        self.applied_learning_rate.assign(update.rate)
        self.update_count.assign(update.count)
        if _dormant.SUPPORTED and _keras_private.is_traced(update.count):
            self.__dict__["traced"] = True
        for feature in self.hooked():
            feature.after_update(optimizer, self, update)

    # --- files ------------------------------------------------------------------

    def entries(self) -> Entries:
        """Every variable's value, by entry name (what a file holds)."""
        if not self.has_variables:
            return {}
        names = list(CORE_KEYS) + [k for f in self.active() for k in f.keys]
        with _keras_private.eager_scope():
            return {name: host_array(getattr(self, name)) for name in names}

    def preview_entries(self, optimizer: Any, entries: Entries | None) -> None:
        """Shows what queued entries change before the build (see ``Feature.queued``)."""
        for feature in features():
            if entries and feature.keys[0] in entries:
                feature.queued(optimizer, entries)

    def assign_entries(
        self, optimizer: Any, entries: Entries | None, owners: dict[int, int] | None = None
    ) -> None:
        """Restores this state from a file's validated entries (None: a plain file).

        Creates the features a file brings when they are training state
        (``created_by_files``); the rest keep what they are. ``owners``: see
        :meth:`Feature.assign`.
        """
        entries = entries or {}
        for feature in features():
            if feature.created_by_files and feature.keys[0] in entries:
                self.create(optimizer, feature.name, **feature.options_for(entries))
        with _keras_private.eager_scope():
            if RATE_KEY in entries:
                self.applied_learning_rate.assign(entries[RATE_KEY])
                self.update_count.assign(entries[COUNT_KEY])
            else:
                self.update_count.assign(NO_UPDATE)
            for feature in self.active():
                own = entries if feature.keys[0] in entries else None
                feature.assign(optimizer, self, own, owners)

    # Keras saving (.keras / .weights.h5): the optimizer reads this state's
    # group itself, together with its own, so that it can check everything
    # before assigning anything (see persistence.files); here only the writing.

    def save_own_variables(self, store: WeightsStore) -> None:
        entries = self.entries() if self.has_variables else None
        if entries is None and self.pending is not None:
            entries = self.pending.entries
        for key, value in (entries or {}).items():
            store[key] = value
        owner = self.owner()
        manifest = None if owner is None else owner._manifest_to_save()
        if manifest is not None:
            store[MANIFEST_KEY] = manifest.encode()

    def load_own_variables(self, store: WeightsStore) -> None:
        pass  # read by the owning optimizer, see persistence.files.read_file


def make_variable(optimizer: Any, name: str, initial: np.ndarray) -> Any:
    """A non-trainable scalar or vector of state, next to the optimizer's own.

    Constant initial values: under ``fit`` the optimizer is built inside the
    traced train function, where initial values that read other variables
    cannot be lifted out (XLA).
    """
    with keras.name_scope(optimizer.name, caller=optimizer):
        return keras.Variable(
            initializer=initial,
            dtype=initial.dtype,
            trainable=False,
            autocast=False,
            aggregation="only_first_replica",
            name=name,
        )
