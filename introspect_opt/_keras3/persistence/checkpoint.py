"""tf.train.Checkpoint: the manifest, and queued slots, on the TensorFlow backend.

A checkpoint tracks optimizer variables by position (``_variables/N``). Two
things make our checkpoints complete and self-describing:

* the state carries a child that saves the manifest (``_keras3.persistence.manifest``) as a
  string tensor. Restored, it refuses another class or slot layout before
  the optimizer's own variables are assigned (the optimizer lists the state
  first among its children, so TensorFlow restores it first), and hands the
  slots TensorFlow holds back for an unbuilt optimizer to the queue that
  ``build`` matches by manifest (``queue.Pending``);
* when slots wait in that queue, a save lists them under their positions
  (``_variables/N``), as a built optimizer would: the checkpoint holds
  everything, and a plain Keras optimizer restores it too.
"""

from __future__ import annotations

import json
import weakref
from typing import Any

import numpy as np
import tensorflow as tf

from introspect_opt._common.errors import CHECKPOINT_SOURCE, KeepState, RefusedLoad
from introspect_opt._common.manifest import Manifest, decode
from introspect_opt._common.names import STATE_ATTRIBUTE
from introspect_opt._keras3 import compat as _keras_private
from introspect_opt._keras3.persistence import matching as _matching
from introspect_opt._keras3.persistence import queue as _queue
from introspect_opt._keras3.persistence.entries import check_entries


class ManifestRecord(_keras_private.Trackable):
    """The state's child that saves and restores the manifest as a string tensor."""

    def __init__(self, state: Any) -> None:
        self._state = weakref.ref(state)

    def _serialize_to_tensors(self) -> dict[str, Any]:
        state = self._state()
        owner = None if state is None else state.owner()
        manifest = None if owner is None else owner._manifest_to_save()
        text = "" if manifest is None else json.dumps(manifest.to_json(), sort_keys=True)
        with tf.device("/cpu:0"):
            return {_keras_private.MANIFEST_ATTRIBUTE: tf.constant(text)}

    def children_to_save(self, state: Any, children: dict[str, Any]) -> dict[str, Any]:
        """The state's children for a save (see ``state_children_to_save``)."""
        return state_children_to_save(state, children)

    def _restore_from_tensors(self, restored_tensors: dict[str, Any]) -> Any:
        text = restored_tensors[_keras_private.MANIFEST_ATTRIBUTE].numpy()
        state = self._state()
        owner = None if state is None else state.owner()
        if text and owner is not None:
            manifest = decode(
                np.frombuffer(text, np.uint8), CHECKPOINT_SOURCE, keep_state=KeepState.KERAS3
            )
            restored(owner, state, manifest)
        return tf.no_op()


def restored(optimizer: Any, state: Any, manifest: Manifest) -> None:
    """A checkpoint with a manifest is being restored into ``optimizer`` (before its variables)."""
    try:
        _matching.check_identity(optimizer, manifest, CHECKPOINT_SOURCE)
    except RefusedLoad:
        _queue.restore_handled(state)  # it changed nothing, the queue included
        # Nothing of this checkpoint may reach the optimizer at build either:
        # neither its slots nor the state's entries TensorFlow holds for later.
        _keras_private.drop_waiting_checkpoint_slots(optimizer)
        _keras_private.drop_waiting_checkpoint_values(state)
        raise
    if not optimizer.built:
        # Queued after any earlier load, which applies if this one does not fit.
        adopt_waiting_slots(optimizer, state, manifest)
    elif state.has_variables:
        # As a file without a feature's entries resets it (``assign_entries``):
        # values this checkpoint holds are restored over these right after
        # (the manifest restores first), the others must not pass for values
        # of the update the restored step counter names.
        with _keras_private.eager_scope():
            for feature in state.active():
                feature.assign(optimizer, state, None)


def _adopt_state_entries(state: Any) -> Any:
    """The state's entries a checkpoint holds for an unbuilt optimizer, taken over (or None)."""
    values = _keras_private.waiting_checkpoint_values(state)
    if not values:
        return None
    entries = check_entries(_Group(values), CHECKPOINT_SOURCE)
    holders = {name: _QueuedValue(value) for name, value in values.items()}
    _keras_private.drop_waiting_checkpoint_values(state, holders)
    state.__dict__["_adopted_entry_holders"] = holders
    return entries


class _Group(dict):  # type: ignore[type-arg]
    """Checkpoint values by name, read like a file's group (``check_entries``)."""


def adopt_waiting_slots(optimizer: Any, state: Any, manifest: Manifest | None) -> None:
    """Moves the slots a checkpoint holds for an unbuilt optimizer into the queue.

    TensorFlow keeps them inside until ``build`` creates variables at their
    positions, where no save sees them; in the queue, every save writes them,
    and ``build`` matches them to the variables it is given.
    """
    waiting = _keras_private.waiting_checkpoint_slots(optimizer)
    prefix_count = _matching.prefix_count(optimizer)
    positions = sorted(waiting)
    if positions != list(range(prefix_count, prefix_count + len(positions))):
        return  # not a plain optimizer's layout: left to TensorFlow, as in plain Keras
    if manifest is not None and len(manifest.variables) != prefix_count + len(positions):
        return
    entries = None if state.has_variables else _adopt_state_entries(state)
    if not waiting and entries is None:
        return
    prefix = optimizer._plain_variables()[:prefix_count]
    values = [*_matching.host_values(prefix), *(waiting[p] for p in positions)]
    # Read now and held here: TensorFlow would read them from the checkpoint
    # file at build, which a save to the same path or a CheckpointManager's
    # rotation may have replaced or deleted by then.
    holders = {p: _QueuedValue(waiting[p]) for p in positions}
    _keras_private.drop_waiting_checkpoint_slots(optimizer, holders)
    _queue.enqueue(optimizer, state, CHECKPOINT_SOURCE, values, entries, manifest)
    _queue.restore_handled(state)  # it is the newest in the queue now
    state.__dict__["_queued_values"] = (state.pending, [holders[p] for p in positions])
    entry_holders = state.__dict__.pop("_adopted_entry_holders", None)
    if entry_holders is not None:
        state.__dict__["_adopted_entries"] = (state.pending, entry_holders)


def applied(optimizer: Any, state: Any, pending: Any, plan: _matching.Plan) -> None:
    """A queue taken over from a checkpoint was applied at build: bind its entries there.

    The restore's status (``assert_consumed()`` ...) then counts the
    variables that received the values as restored, as after a plain build.
    """
    adopted = state.__dict__.pop("_queued_values", None)
    if adopted is not None and adopted[0] is pending:
        count = _matching.prefix_count(optimizer)
        for holder, variable in zip(adopted[1], plan.targets[count:], strict=False):
            _keras_private.rebind_checkpoint_value(holder, variable)
    entries = state.__dict__.pop("_adopted_entries", None)
    if entries is not None and entries[0] is pending:
        for name, holder in entries[1].items():
            variable = getattr(state, name, None)
            if variable is not None:
                _keras_private.rebind_checkpoint_value(holder, variable)


def children_to_save(optimizer: Any, state: Any, children: dict[str, Any]) -> dict[str, Any]:
    """The optimizer's checkpoint children: the state first, queued slots in ``_variables``."""
    if not optimizer.built and state.pending is None:
        adopt_waiting_slots(optimizer, state, None)
    children = dict(children)
    first = {}
    if STATE_ATTRIBUTE in children:
        first[STATE_ATTRIBUTE] = children.pop(STATE_ATTRIBUTE)
    pending = state.pending
    listed = _keras_private.VARIABLES_CHILD
    if pending is not None and pending.slots and listed in children:
        variables = optimizer._plain_variables()
        # One object per queue and variable list: TensorFlow lists children
        # more than once per save and matches them by identity.
        cached = state.__dict__.get("_queued_positions")
        if cached is None or cached[0] is not pending or cached[1] != [id(v) for v in variables]:
            adopted = state.__dict__.get("_queued_values")
            if adopted is not None and adopted[0] is pending:
                queued = adopted[1]  # bound to the checkpoint they came from
            else:
                queued = [_QueuedValue(v) for v in pending.slots]
            cached = (pending, [id(v) for v in variables], _Positions([*variables, *queued]))
            state.__dict__["_queued_positions"] = cached  # not a tracked attribute
        children[listed] = cached[2]
    return {**first, **children}


def state_children_to_save(state: Any, children: dict[str, Any]) -> dict[str, Any]:
    """The state's checkpoint children: queued entries where its variables do not exist yet."""
    pending = state.pending
    if state.has_variables or pending is None or not pending.entries:
        return children
    cached = state.__dict__.get("_queued_entries")
    if cached is None or cached[0] is not pending:
        cached = (pending, {k: _QueuedValue(v) for k, v in pending.entries.items()})
        state.__dict__["_queued_entries"] = cached
    return {**children, **cached[1]}


class _Positions(_keras_private.Trackable):
    """A list's checkpoint children by position ("0", "1", ...), as Keras's list has them."""

    def __init__(self, items: list[Any]) -> None:
        self._items = items

    def _trackable_children(self, save_type: Any = None, **kwargs: Any) -> dict[str, Any]:
        return {str(i): item for i, item in enumerate(self._items)}


class _QueuedValue(_keras_private.Trackable):
    """A queued slot, saved as the variable at its position would be."""

    def __init__(self, value: np.ndarray) -> None:
        _keras_private.initialize_trackable(self)
        self._value = value

    def _serialize_to_tensors(self) -> dict[str, Any]:
        with tf.device("/cpu:0"):
            return {_keras_private.VARIABLE_ATTRIBUTE: tf.constant(self._value)}

    def _restore_from_tensors(self, restored_tensors: dict[str, Any]) -> Any:
        # Only reached by restoring into the object listed for a save.
        self._value = np.asarray(restored_tensors[_keras_private.VARIABLE_ATTRIBUTE].numpy())
        return tf.no_op()
