"""The ready-made introspectable tf_keras optimizers: one class statement per tf_keras optimizer.

New optimizers (``tf_keras.optimizers.*``, which ``tf.keras.optimizers.*`` is
under ``TF_USE_LEGACY_KERAS=1``) are ``Introspectable<Name>``, with the new
family's mixin; legacy ones (``tf_keras.optimizers.legacy.*``) are
``IntrospectableLegacy<Name>``, with the legacy family's. Each is its tf_keras
class with the cached-rate mixin in front: same constructor, config, default
name and variables, bit-identical updates, registered for tf_keras
serialization as ``introspect_opt>Introspectable[Legacy]<Name>``.

The table below is the only list. For an optimizer a new tf_keras release
adds, add its line to it: type checkers read the statement, and the loop
after the table completes the class (``factory.ready_made``); ``__all__``,
hence ``introspect_opt.tf_keras``'s exports, follows.
``tests/tf_keras/test_tfk_optimizers.py`` fails, naming this file, when the
installed tf_keras exports an optimizer missing here.

Every other name here is private (underscored): type checkers, which cannot
run the derivation of ``__all__``, export the module's public names, the
classes.
"""

import typing as _typing

# (introspect_opt.tf_keras imports _tf_keras.compat first, which explains a
# missing tf-keras package.)
from tf_keras import optimizers as _new
from tf_keras.optimizers import legacy as _legacy

from introspect_opt._tf_keras.factory import ready_made as _ready_made
from introspect_opt._tf_keras.mechanism import LegacyIntrospectionMixin as _LegacyMixin
from introspect_opt._tf_keras.mechanism import NewIntrospectionMixin as _NewMixin


# fmt: off
class IntrospectableAdadelta(_NewMixin, _new.Adadelta): ...
class IntrospectableAdafactor(_NewMixin, _new.Adafactor): ...
class IntrospectableAdagrad(_NewMixin, _new.Adagrad): ...
class IntrospectableAdam(_NewMixin, _new.Adam): ...
class IntrospectableAdamW(_NewMixin, _new.AdamW): ...
class IntrospectableAdamax(_NewMixin, _new.Adamax): ...
class IntrospectableFtrl(_NewMixin, _new.Ftrl): ...
class IntrospectableLion(_NewMixin, _new.Lion): ...
class IntrospectableNadam(_NewMixin, _new.Nadam): ...
class IntrospectableRMSprop(_NewMixin, _new.RMSprop): ...
class IntrospectableSGD(_NewMixin, _new.SGD): ...
class IntrospectableLegacyAdadelta(_LegacyMixin, _legacy.Adadelta): ...
class IntrospectableLegacyAdagrad(_LegacyMixin, _legacy.Adagrad): ...
class IntrospectableLegacyAdam(_LegacyMixin, _legacy.Adam): ...
class IntrospectableLegacyAdamax(_LegacyMixin, _legacy.Adamax): ...
class IntrospectableLegacyFtrl(_LegacyMixin, _legacy.Ftrl): ...
class IntrospectableLegacyNadam(_LegacyMixin, _legacy.Nadam): ...
class IntrospectableLegacyRMSprop(_LegacyMixin, _legacy.RMSprop): ...
class IntrospectableLegacySGD(_LegacyMixin, _legacy.SGD): ...
# fmt: on

# Each statement above becomes a ready-made class: public module, docstring, registration.
_TABLE = sorted(n for n, v in globals().items() if isinstance(v, type) and v.__module__ == __name__)
for _name in _TABLE:
    _ready_made(globals()[_name])
del _name

if not _typing.TYPE_CHECKING:  # type checkers export the module's public names: the classes
    __all__ = _TABLE
