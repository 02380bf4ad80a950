"""What docs/keras2.md, "Types", says type checkers see; checked by tests/test_typing.py.

Not run: its ``reveal_type`` lines are what the test reads.
"""

import tf_keras

import introspect_opt
from introspect_opt import tf_keras as itk

# `from introspect_opt import X` is typed as the Keras 3 classes, whatever
# TF_USE_LEGACY_KERAS will be at run time ...
reveal_type(introspect_opt.IntrospectableSGD())
reveal_type(introspect_opt.introspect)
reveal_type(introspect_opt.introspectable)
# ... and introspect_opt.tf_keras, as the tf_keras classes: new and legacy.
reveal_type(itk.IntrospectableSGD())
reveal_type(itk.IntrospectableLegacySGD())
reveal_type(itk.introspect)
reveal_type(itk.introspectable)
reveal_type(itk.introspect(tf_keras.optimizers.legacy.Adam()).current_learning_rate)
