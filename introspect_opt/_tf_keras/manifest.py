"""The manifest of tf_keras optimizer state: identity recorded, never inferred.

The same manifest as Keras 3's (``_common.manifest``: format
``introspect_opt.manifest/1``, the same fields, encoding and validation),
described from tf_keras objects:

* ``class``: the tf_keras class the introspectable one extends (``SGD``;
  ``legacy.SGD`` for ``tf.keras.optimizers.legacy.SGD``, whose state is laid
  out differently);
* ``layout``: what a build of that class, with the optimizer's config,
  creates for two scratch variables (a matrix and a vector), derived from a
  real build in a scratch graph, as ``_keras3.persistence.manifest.layout`` does for Keras 3.
  tf_keras's new ``SGD`` creates its ``m`` slots whatever ``momentum`` is, so
  ``momentum`` does not change its layout; the legacy ``SGD`` creates them only
  for a momentum above 0;
* ``built_for`` and ``variables``: the model variables the optimizer was
  built for (path = variable name without ``:0``) and, per optimizer variable
  (``optimizer.variables`` for the new family, ``optimizer.weights`` for the
  legacy one, the order files hold them in), its role and the model variable
  it belongs to. Owners are recorded where the slots are created, not
  parsed from names: ``add_variable_from_reference(model_variable, role)``
  (new family), ``add_slot(var, role)`` read back through ``get_slot`` (legacy).

Where it is written: ``.keras`` / ``.weights.h5`` (new family; tf_keras writes
no legacy optimizer state there), entry ``manifest`` of the cached rate's
group; ``tf.train.Checkpoint`` (and everything built on it: TF-format
``save_weights``, ``CheckpointManager``, ``BackupAndRestore``), the state's
child ``_manifest``, a ``tf.train.experimental.PythonState``: TensorFlow
restores Python state before any variable, so a refusal comes before anything
is assigned. HDF5 model files (tf_keras writes the optimizer's values by
position and hands them to ``set_weights``) and SavedModel directories (which
cannot hold Python state) have no place for it: they keep the positional
checks.
"""

from __future__ import annotations

import json
import weakref
from typing import Any

import numpy as np
import tensorflow as tf

from introspect_opt._common import manifest as _common
from introspect_opt._common.errors import (
    CHECKPOINT_SOURCE,
    KeepState,
    RefusedLoad,
    refused_load,
)
from introspect_opt._common.manifest import Manifest, ModelVariable, Slot
from introspect_opt._tf_keras import compat as private

# What makes a refused load fit (refused_load adds how to keep the current state).
_SAME_OPTIMIZER = (
    "Create the optimizer with the same class and arguments as the one that wrote "
    "it (for example the same `amsgrad`, `use_ema` or legacy `momentum`)."
)
_PROBE_NAME = "introspect_opt_layout_probe"
_SCRATCH = (("matrix", (3, 4)), ("vector", (4,)))


def _is_legacy(optimizer_class: type) -> bool:
    return issubclass(optimizer_class, private.LegacyOptimizer)


def optimizer_class(optimizer: Any) -> str:
    """The tf_keras class an introspectable optimizer extends, by name."""
    base = type(optimizer)._introspect_base
    return f"legacy.{base.__name__}" if _is_legacy(base) else str(base.__name__)


def _path(variable: Any) -> str:
    return str(variable.name).split(":")[0]


def _shape(variable: Any) -> tuple[int, ...]:
    return tuple(-1 if d is None else int(d) for d in variable.shape)


def _dtype(variable: Any) -> str:
    # A mixed-precision model variable reports its cast dtype; slots take the true one.
    return str(tf.as_dtype(getattr(variable, "true_dtype", variable.dtype)).name)


def _own_role(variable: Any) -> str:
    # "iteration:0", "iter:0", "SGD/iter:0" (created under the optimizer's name scope).
    return _path(variable).rsplit("/", 1)[-1]


def _owners(optimizer: Any, built_for: list[Any]) -> dict[int, tuple[int, str]]:
    """id(optimizer variable) -> (index in ``built_for``, role), as recorded at creation."""
    index = {id(v): i for i, v in enumerate(built_for)}
    found: dict[int, tuple[int, str]] = {}
    if _is_legacy(type(optimizer)):
        names = optimizer.get_slot_names()
        for i, variable in enumerate(built_for):
            for name in names:
                try:
                    found[id(optimizer.get_slot(variable, name))] = (i, name)
                except KeyError:  # no such slot for this variable
                    continue
        return found
    for key, (reference, role) in optimizer.__dict__.get(REFERENCES, {}).items():
        owner = reference()
        if owner is not None and id(owner) in index:
            found[key] = (index[id(owner)], role)
    return found


def _by_name(variable: Any, built_for: list[Any]) -> tuple[int, str] | None:
    """A new optimizer's slot named ``<role>/<model variable name>`` (the probe's)."""
    name = _path(variable)
    matches = [(i, _path(v)) for i, v in enumerate(built_for) if name.endswith("/" + _path(v))]
    # The longest name wins ("m/dense/kernel": "dense/kernel", not "kernel").
    longest = [m for m in matches if len(m[1]) == max((len(p) for _, p in matches), default=0)]
    if len(longest) != 1:
        return None
    index, owner = longest[0]
    return index, name[: -len(owner) - 1].rsplit("/", 1)[-1]


def attribute(optimizer: Any, variables: list[Any], built_for: list[Any]) -> list[Slot]:
    """For each optimizer variable: its role, and the index of the model variable it is for."""
    owners = _owners(optimizer, built_for)
    slots = []
    for variable in variables:
        found = owners.get(id(variable))
        if found is None and not _is_legacy(type(optimizer)):
            found = _by_name(variable, built_for)
        owner, role = (None, _own_role(variable)) if found is None else found
        slots.append(Slot(_path(variable), role, owner, _shape(variable), _dtype(variable)))
    return slots


# Per optimizer instance (its __dict__, untracked): what the slots were created for.
BUILT_FOR = "_introspect_built_for"
REFERENCES = "_introspect_references"
_BUILT_FOR_IDS = "_introspect_built_for_ids"


def record_built_for(optimizer: Any, var_list: list[Any]) -> list[Any]:
    """Remembers the model variables the optimizer creates slots for, in first-seen order.

    Returns the ones it did not know yet.
    """
    recorded = optimizer.__dict__.setdefault(BUILT_FOR, [])
    seen = optimizer.__dict__.setdefault(_BUILT_FOR_IDS, set())
    added = [v for v in var_list if id(v) not in seen]
    for variable in added:
        seen.add(id(variable))
        recorded.append(variable)
    return added


def forget_built_for(optimizer: Any, variables: list[Any]) -> None:
    """Undoes ``record_built_for`` for ``variables`` (a refused restore created their slots)."""
    drop = {id(v) for v in variables}
    recorded = optimizer.__dict__.get(BUILT_FOR, [])
    recorded[:] = [v for v in recorded if id(v) not in drop]
    optimizer.__dict__.get(_BUILT_FOR_IDS, set()).difference_update(drop)


def record_reference(optimizer: Any, variable: Any, model_variable: Any, role: str) -> None:
    """Remembers which model variable a new optimizer's slot was created for."""
    optimizer.__dict__.setdefault(REFERENCES, {})[id(variable)] = (
        weakref.ref(model_variable),
        str(role),
    )


def layout(optimizer: Any) -> tuple[tuple[Any, ...], ...] | None:
    """What a build of this optimizer's class and config creates, per scratch variable.

    Built in a scratch ``tf.Graph`` (no values computed, outside any
    strategy, nothing left behind), once per class and config. None where the
    optimizer cannot be rebuilt from its config.
    """

    def derive(base: Any, config: dict[str, Any]) -> tuple[tuple[Any, ...], ...]:
        with tf.Graph().as_default():
            copy = base.from_config({**config, "name": _PROBE_NAME})
            scratch = [
                tf.Variable(tf.zeros(shape), name=name, trainable=True) for name, shape in _SCRATCH
            ]
            if _is_legacy(base):
                private.legacy_create_slots(copy, scratch)
                created = [w for w in copy.weights if w is not copy.iterations]
                slots = attribute(copy, created, scratch)
            else:
                before = len(copy.variables)
                copy.build(scratch)
                slots = attribute(copy, list(copy.variables)[before:], scratch)
        return tuple((s.role, s.owner, list(s.shape), s.dtype) for s in slots)

    return _common.cached_layout(optimizer, derive)


def describe(optimizer: Any) -> Manifest:
    """The manifest of an introspectable tf_keras optimizer, as it is now."""
    variables = optimizer._introspect_plain_variables()
    recorded = optimizer.__dict__.get(BUILT_FOR)
    # A legacy optimizer is built for what it created slots for so far; a new
    # one, by `build`. (None also where `introspect()` came after the build.)
    built = _is_legacy(type(optimizer)) or optimizer._introspect_is_built()
    built_for = list(recorded) if built and recorded is not None else None
    return Manifest(
        optimizer_class=optimizer_class(optimizer),
        layout=layout(optimizer),
        built_for=None
        if built_for is None
        else tuple(ModelVariable(_path(v), _shape(v), _dtype(v)) for v in built_for),
        variables=tuple(attribute(optimizer, variables, built_for or [])),
    )


def decode(value: Any, source: str) -> Manifest:
    """A stored manifest, validated; a damaged one raises ``RefusedLoad`` naming ``source``."""
    return _common.decode(value, source, _consistent, keep_state=KeepState.TF_KERAS)


def _consistent(slot: Slot, built_for: tuple[ModelVariable, ...]) -> bool:
    """Whether a slot's recorded owner and role are those its name says.

    tf_keras names a new optimizer's slot ``<role>/<model variable>``, a legacy
    one's ``<model variable>/<role>``, and its own variables after their role,
    any of them under a name scope (``Adam/iter``).
    """
    if slot.owner is None:
        return slot.name.rsplit("/", 1)[-1] == slot.role
    path = built_for[slot.owner].path
    return any(
        slot.name == tail or slot.name.endswith("/" + tail)
        for tail in (f"{slot.role}/{path}", f"{path}/{slot.role}")
    )


def check_identity(optimizer: Any, manifest: Manifest, source: str) -> None:
    """Refuses state another optimizer class or slot layout wrote, built or not."""
    _common.check_identity(
        manifest,
        optimizer_class(optimizer),
        lambda: layout(optimizer),
        f"the state of {name(optimizer)}",
        source,
        _SAME_OPTIMIZER,
        KeepState.TF_KERAS,
    )


def check_recorded(
    optimizer: Any, manifest: Manifest, arrays: list[np.ndarray], source: str
) -> None:
    """The file's entries are what its manifest lists (anything else is damage)."""
    shapes = [tuple(a.shape) for a in arrays]
    recorded = [s.shape for s in manifest.variables]
    if shapes != recorded:
        raise refused_load(
            f"the state of {name(optimizer)}",
            source,
            f"its manifest lists {len(recorded)} optimizer variables of shapes {recorded}, "
            f"the file holds {len(shapes)} of shapes {shapes}: the file is damaged. "
            "Nothing was loaded into the optimizer.",
            keep_state=KeepState.TF_KERAS,
        )


def name(optimizer: Any) -> str:
    """The optimizer, as error messages name it (the legacy family has only ``_name``)."""
    label = private.optimizer_label(optimizer)
    return f"{type(optimizer).__name__} '{label}'"


class ManifestRecord(tf.train.experimental.PythonState):
    """The state's checkpoint child that saves the manifest, and checks it first at a restore.

    TensorFlow restores Python state eagerly, before it assigns any variable
    of the restore (``restore_saveables``), in eager and graph code alike.
    """

    def __init__(self, optimizer: Any) -> None:
        self._owner = weakref.ref(optimizer)

    def serialize(self) -> str:
        owner = self._owner()
        if owner is None:
            return ""
        return json.dumps(describe(owner).to_json(), sort_keys=True)

    def deserialize(self, string_value: Any) -> None:
        owner = self._owner()
        if owner is None or not string_value:
            return
        try:
            manifest = decode(string_value, CHECKPOINT_SOURCE)
            check_identity(owner, manifest, CHECKPOINT_SOURCE)
        except RefusedLoad:
            # The restore has listed everything already (values wait for
            # variables that do not exist yet, the step-counter lookup marked
            # the cache stale): undo what this restore did before raising.
            owner._introspect_refuse_restore(private.restore_uid(self))
            raise
        owner._introspect_accept_restore(private.restore_uid(self))
