"""introspectable(), introspect() and current_learning_rate() on tf_keras objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import pytest
import tensorflow as tf
import tf_keras
from tfk_helpers import SCHEDULE, array_bits, bits, make_model, mirrored_strategy, update_count

from introspect_opt import tf_keras as itk


class MyNewSGD(tf_keras.optimizers.SGD):
    """A user's own new-style optimizer."""


class MyLegacyAdam(tf_keras.optimizers.legacy.Adam):
    """A user's own legacy optimizer."""


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        (keras.optimizers.SGD, r"received the class keras\.src.*SGD, a Keras 3 optimizer class"),
        (keras.optimizers.SGD(), r"received .*\(type keras\..*introspect\(optimizer\)"),
        (tf_keras.mixed_precision.LossScaleOptimizer, "wrapper .*applies no updates itself"),
        (tf_keras.optimizers.Optimizer, "abstract base class"),
        (tf_keras.optimizers.legacy.Optimizer, "abstract base class"),
        (
            dict,
            r"subclass of tf_keras\.optimizers\.Optimizer.*received the class builtins\.dict",
        ),
    ],
    ids=["keras3-class", "keras3-instance", "wrapper", "new-base", "legacy-base", "other-class"],
)
def test_introspectable_refuses_what_it_cannot_make(argument: Any, message: str) -> None:
    """Errors name the argument, what was received and what to do instead."""
    with pytest.raises(TypeError, match=r"introspectable\(optimizer_class\)") as raised:
        itk.introspectable(argument)
    assert raised.match(message)


def test_introspectable_user_classes_of_both_families(tmp_path: Path) -> None:
    """User subclasses get the mechanism of their family, once, registered for loading."""
    New, Legacy = itk.introspectable(MyNewSGD), itk.introspectable(MyLegacyAdam)
    assert itk.introspectable(MyNewSGD) is New and itk.introspectable(New) is New
    assert New.__name__ == "IntrospectableMyNewSGD" and issubclass(New, MyNewSGD)
    assert issubclass(Legacy, tf_keras.optimizers.legacy.Adam)
    assert tf_keras.saving.get_registered_name(New) == (
        f"introspect_opt.{__name__}>IntrospectableMyNewSGD"
    )
    for cls in (New, Legacy):
        model = make_model()
        model.compile(cls(SCHEDULE), loss="mse")
        model.optimizer.apply_gradients(
            zip(
                [tf.ones_like(v) for v in model.trainable_variables],
                model.trainable_variables,
                strict=True,
            )
        )
        model.save(tmp_path / f"{cls.__name__}.h5")
        loaded = tf_keras.models.load_model(tmp_path / f"{cls.__name__}.h5")
        assert type(loaded.optimizer) is cls
        assert bits(loaded.optimizer.current_learning_rate) == bits(SCHEDULE(0))


@pytest.mark.parametrize(
    "plain_cls", [tf_keras.optimizers.SGD, tf_keras.optimizers.legacy.SGD], ids=["new", "legacy"]
)
def test_introspect_converts_in_place_and_training_continues_bit_identically(
    plain_cls: Any,
) -> None:
    """An instance trained by someone else: same object, derived rate, then cached, same weights."""
    w, reference = tf.Variable([1.0, 2.0]), tf.Variable([1.0, 2.0])
    optimizer, plain = plain_cls(SCHEDULE, momentum=0.9), plain_cls(SCHEDULE, momentum=0.9)
    for _ in range(2):
        optimizer.apply_gradients([(tf.ones(2), w)])
        plain.apply_gradients([(tf.ones(2), reference)])
    same = itk.introspect(optimizer)
    assert same is optimizer and isinstance(optimizer, plain_cls)
    assert type(optimizer) is itk.introspectable(plain_cls)
    assert update_count(optimizer) == -1
    assert bits(optimizer.current_learning_rate) == bits(SCHEDULE(1))  # derived
    for _ in range(2):
        optimizer.apply_gradients([(tf.ones(2), w)])
        plain.apply_gradients([(tf.ones(2), reference)])
    assert update_count(optimizer) == 4 and bits(optimizer.current_learning_rate) == bits(
        SCHEDULE(3)
    )
    assert array_bits([w]) == array_bits([reference])
    assert itk.introspect(optimizer) is optimizer


def test_introspect_keeps_the_strategy_and_the_checkpoint(
    tmp_path: Path, devices: list[str]
) -> None:
    """Converted outside the scope, the cache is mirrored; converted after a save, it is saved."""
    strategy = mirrored_strategy(devices[:2])
    with strategy.scope():
        optimizer = tf_keras.optimizers.SGD(SCHEDULE)
        w = tf.Variable([1.0])
    tf.train.Checkpoint(optimizer=optimizer).write(str(tmp_path / "before"))  # lists children
    itk.introspect(optimizer)
    state = optimizer._introspection_state
    assert isinstance(state.applied_learning_rate, tf.distribute.DistributedValues)

    @tf.function
    def step() -> None:
        strategy.run(lambda: optimizer.apply_gradients([(tf.ones(1), w)]))

    step()
    path = tf.train.Checkpoint(optimizer=optimizer).write(str(tmp_path / "after"))
    names = [name for name, _ in tf.train.list_variables(path)]
    assert (
        "optimizer/_introspection_state/applied_learning_rate/.ATTRIBUTES/VARIABLE_VALUE" in names
    )


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        (tf_keras.optimizers.SGD, r"received the class .*introspectable\(cls\) for classes"),
        (keras.optimizers.SGD(), r"Keras 3 optimizer: use .*introspect_opt\.introspect"),
        ("sgd", r"received 'sgd' \(type builtins\.str\)"),
    ],
    ids=["class", "keras3", "string"],
)
def test_introspect_refuses_non_instances(argument: Any, message: str) -> None:
    """introspect() says what it expects, what it got, and what to use instead."""
    with pytest.raises(
        TypeError, match=r"introspect\(optimizer\) expects a tf_keras optimizer"
    ) as e:
        itk.introspect(argument)
    assert e.match(message)


def test_introspect_refuses_a_loss_scale_optimizer() -> None:
    """A LossScaleOptimizer applies no update itself: pass its inner optimizer."""
    wrapper = tf_keras.mixed_precision.LossScaleOptimizer(tf_keras.optimizers.SGD())
    with pytest.raises(TypeError, match=r"introspect\(optimizer\.inner_optimizer\)"):
        itk.introspect(wrapper)


def test_current_learning_rate_looks_through_models_and_wrappers() -> None:
    """It reads optimizers, LossScaleOptimizers and compiled models, and explains refusals."""
    optimizer = itk.IntrospectableLegacyAdam(0.05)
    wrapper = tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
    model = make_model()
    model.compile(wrapper, loss="mse")
    for holder in (optimizer, wrapper, model):
        assert bits(itk.current_learning_rate(holder)) == bits(0.05)
    with pytest.raises(TypeError, match=r"does not record .*introspect_opt\.tf_keras\.introspect"):
        itk.current_learning_rate(tf_keras.optimizers.SGD())
    with pytest.raises(TypeError, match=r"model '.*', which is not compiled"):
        itk.current_learning_rate(make_model())
    with pytest.raises(
        TypeError, match=r"Keras 3 object: use .*introspect_opt\.current_learning_rate"
    ):
        itk.current_learning_rate(keras.optimizers.SGD())


def test_dtensor_mesh_is_refused() -> None:
    """tf_keras's DTensor mode (mesh=...) is refused at construction, with the alternative."""
    mesh = tf.experimental.dtensor.create_mesh([("batch", 1)], devices=["CPU:0"])
    with pytest.raises(ValueError, match=r"mesh=.*DTensor mode.*tf\.distribute strategy"):
        itk.IntrospectableSGD(0.1, mesh=mesh)
