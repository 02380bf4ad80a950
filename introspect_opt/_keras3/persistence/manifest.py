"""The manifest of a Keras 3 optimizer: described from Keras objects.

The format, its validation and Keras 3's slot naming are shared with tf_keras
(``_common.manifest``); here, what a Keras 3 optimizer is: its public class,
the layout a real build of it creates, and the manifest of its variables.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from introspect_opt._common import manifest as _common
from introspect_opt._common.manifest import Manifest, ModelVariable, Slot, shape_of
from introspect_opt._keras3 import compat as _keras_private

_PROBE_NAME = "introspect_opt_layout_probe"


def _dtype(variable: Any) -> str:
    return str(keras.backend.standardize_dtype(variable.dtype))


def attribute(variables: list[Any], built_for: list[Any]) -> list[Slot]:
    """Each optimizer variable's role and owner (see ``_common.manifest.attribute``)."""
    return _common.attribute(variables, built_for, _dtype)


def layout(optimizer: Any) -> tuple[tuple[Any, ...], ...] | None:
    """What a build of this optimizer's class and arguments creates, per scratch variable.

    Built for real on two tiny scratch variables (eagerly, once per class and
    configuration): the roles, owners, shapes and dtypes of what the build
    adds. None where the optimizer cannot be rebuilt from its config (a
    learning-rate callable that does not serialize).
    """

    def derive(base: Any, config: dict[str, Any]) -> tuple[tuple[Any, ...], ...]:
        # An explicit name: Keras numbers only the names it chooses, so the
        # probe does not shift the default names of the user's optimizers.
        with _keras_private.eager_scope():
            copy = base.from_config({**config, "name": _PROBE_NAME})
            with keras.name_scope(_PROBE_NAME):
                scratch = [
                    keras.Variable(np.zeros((3, 4), "float32"), name="matrix", trainable=True),
                    keras.Variable(np.zeros((4,), "float32"), name="vector", trainable=True),
                ]
            before = len(copy.variables)
            copy.build(scratch)
            created = list(copy.variables)[before:]
        return tuple((s.role, s.owner, list(s.shape), s.dtype) for s in attribute(created, scratch))

    return _common.cached_layout(optimizer, derive)


def optimizer_class(optimizer: Any) -> str:
    """The public Keras class an introspectable optimizer extends, by name."""
    return str(_keras_private.public_class(type(optimizer)._introspect_base).__name__)


def describe(optimizer: Any, variables: list[Any], built_for: list[Any] | None) -> Manifest:
    """The manifest of ``optimizer`` holding ``variables`` (its plain ones), as built."""
    return Manifest(
        optimizer_class=optimizer_class(optimizer),
        layout=layout(optimizer),
        built_for=None
        if built_for is None
        else tuple(ModelVariable(str(v.path), shape_of(v), _dtype(v)) for v in built_for),
        variables=tuple(attribute(variables, built_for or [])),
    )
