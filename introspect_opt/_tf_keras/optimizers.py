"""The ready-made introspectable tf_keras optimizers, one per class tf_keras exports.

New optimizers (``tf_keras.optimizers.*``, which ``tf.keras.optimizers.*`` is
under ``TF_USE_LEGACY_KERAS=1``) are ``Introspectable<Name>``; legacy ones
(``tf_keras.optimizers.legacy.*``) are ``IntrospectableLegacy<Name>``. Each
is its tf_keras class with the cached-rate mixin in front: same constructor,
config, default name and variables, bit-identical updates, registered for
tf_keras serialization as ``introspect_opt>Introspectable[Legacy]<Name>``.
``tests/tf_keras/test_tfk_optimizers.py`` checks that this list covers every
optimizer class the installed tf_keras exports.
"""

from __future__ import annotations

import inspect
from typing import Any

# (introspect_opt.tf_keras imports _tf_keras_private first, which explains a
# missing tf-keras package.)
from tf_keras import optimizers as _new
from tf_keras.optimizers import legacy as _legacy

from introspect_opt._tf_keras.factory import PACKAGE, PUBLIC_MODULE, finish, mixin_for


def _ready_made(base: type, name: str) -> Any:
    """The introspectable subclass of tf_keras's ``base``, public as ``name``."""
    family = "legacy." if "legacy" in base.__module__ else ""
    public = f"tf.keras.optimizers.{family}{base.__name__}"
    rate = inspect.signature(base).parameters["learning_rate"].default
    doc = (
        f"``{public}`` (tf_keras) that records the rate each update applied.\n\n"
        f"Same constructor, config and updates as ``{public}``; adds\n"
        "``current_learning_rate``.\n\n"
        "Examples:\n"
        f"    >>> from introspect_opt.tf_keras import {name}\n"
        f"    >>> opt = {name}()\n"
        "    >>> round(float(opt.current_learning_rate), 6)  # before any update: the first one's\n"
        f"    {round(float(rate), 6)}\n"
    )
    cls = type(
        name,
        (mixin_for(base), base),
        {"__module__": PUBLIC_MODULE, "__qualname__": name, "__doc__": doc},
    )
    finish(cls, base, PACKAGE, name)
    return cls


# One line per optimizer class tf_keras exports, new and legacy
# (tests/tf_keras/test_tfk_optimizers.py derives the list from tf_keras).
IntrospectableAdadelta = _ready_made(_new.Adadelta, "IntrospectableAdadelta")
IntrospectableAdafactor = _ready_made(_new.Adafactor, "IntrospectableAdafactor")
IntrospectableAdagrad = _ready_made(_new.Adagrad, "IntrospectableAdagrad")
IntrospectableAdam = _ready_made(_new.Adam, "IntrospectableAdam")
IntrospectableAdamW = _ready_made(_new.AdamW, "IntrospectableAdamW")
IntrospectableAdamax = _ready_made(_new.Adamax, "IntrospectableAdamax")
IntrospectableFtrl = _ready_made(_new.Ftrl, "IntrospectableFtrl")
IntrospectableLion = _ready_made(_new.Lion, "IntrospectableLion")
IntrospectableNadam = _ready_made(_new.Nadam, "IntrospectableNadam")
IntrospectableRMSprop = _ready_made(_new.RMSprop, "IntrospectableRMSprop")
IntrospectableSGD = _ready_made(_new.SGD, "IntrospectableSGD")
IntrospectableLegacyAdadelta = _ready_made(_legacy.Adadelta, "IntrospectableLegacyAdadelta")
IntrospectableLegacyAdagrad = _ready_made(_legacy.Adagrad, "IntrospectableLegacyAdagrad")
IntrospectableLegacyAdam = _ready_made(_legacy.Adam, "IntrospectableLegacyAdam")
IntrospectableLegacyAdamax = _ready_made(_legacy.Adamax, "IntrospectableLegacyAdamax")
IntrospectableLegacyFtrl = _ready_made(_legacy.Ftrl, "IntrospectableLegacyFtrl")
IntrospectableLegacyNadam = _ready_made(_legacy.Nadam, "IntrospectableLegacyNadam")
IntrospectableLegacyRMSprop = _ready_made(_legacy.RMSprop, "IntrospectableLegacyRMSprop")
IntrospectableLegacySGD = _ready_made(_legacy.SGD, "IntrospectableLegacySGD")
