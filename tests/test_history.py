"""keep_rate_history / rate_history: the last K applied rates, on the device and in files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from helpers import JIT_MODES, SCHEDULE, make_data, make_model, schedule_value, sync

from introspect_opt import IntrospectableSGD, keep_rate_history, rate_history


def trained(size: int | None, steps: int = 6, jit: Any = False, **kwargs: Any) -> Any:
    model = make_model()
    optimizer = IntrospectableSGD(SCHEDULE, momentum=0.9, **kwargs)
    if size:
        keep_rate_history(optimizer, size)
    model.compile(optimizer, loss="mse", jit_compile=jit)
    x, y = make_data(8 * steps)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    return model


@pytest.mark.parametrize("jit", JIT_MODES)
def test_buffer_holds_the_last_updates_bit_for_bit(jit: Any) -> None:
    """After fit the buffer holds the last K updates' rates, as update_step received them."""
    model = trained(4, steps=6, jit=jit)
    steps, rates = rate_history(model)
    assert steps.tolist() == [3, 4, 5, 6]
    np.testing.assert_allclose(rates, [schedule_value(SCHEDULE, s - 1) for s in steps], rtol=1e-6)
    # The newest entry is the cached applied rate itself, bit for bit.
    optimizer = sync(model)
    assert rates[-1].tobytes() == np.float32(optimizer.current_learning_rate).tobytes()


def test_gradient_accumulation_records_updates_only() -> None:
    """With accumulation, only real updates are recorded, each with its rate lr(n*k - 1)."""
    model = trained(8, steps=6, gradient_accumulation_steps=3)
    steps, rates = rate_history(model)
    assert steps.tolist() == [1, 2]
    np.testing.assert_allclose(rates, [schedule_value(SCHEDULE, 2), schedule_value(SCHEDULE, 5)])


def test_enabled_after_build_records_from_then_on() -> None:
    """Turned on for a trained optimizer, it records the updates that follow."""
    model = trained(None, steps=2)
    keep_rate_history(model.optimizer, 8)
    model.make_train_function(force=True)
    assert rate_history(model)[0].tolist() == []
    model.fit(*make_data(24), batch_size=8, epochs=1, verbose=0)
    assert rate_history(model)[0].tolist() == [3, 4, 5]


@pytest.mark.parametrize("size", [0, -3, 2.5, True, "8"])
def test_bad_size_is_refused(size: Any) -> None:
    """A size that is not a positive int fails, saying what to pass."""
    with pytest.raises(ValueError, match=rf"size must be a positive int .*received {size!r}"):
        keep_rate_history(IntrospectableSGD(0.1), size)


def test_size_cannot_change_and_plain_optimizers_are_refused() -> None:
    """Asking again with another size, or for a plain optimizer, fails clearly."""
    optimizer = keep_rate_history(IntrospectableSGD(0.1), 4)
    assert keep_rate_history(optimizer, 4) is optimizer
    with pytest.raises(ValueError, match="already keeps the last 4 rates; received size=8"):
        keep_rate_history(optimizer, 8)
    with pytest.raises(TypeError, match=r"plain Keras optimizer.*introspect_opt.introspect"):
        rate_history(keras.optimizers.SGD(0.1))


def test_keras_file_round_trip_and_interchange(tmp_path: Path) -> None:
    """.keras files keep the history, load into plain SGD, and plain files clear it."""
    model = trained(4)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is IntrospectableSGD
    # The file brings the history back, and the optimizer keeps recording it.
    before = rate_history(model)
    np.testing.assert_array_equal(rate_history(loaded)[0], before[0])
    assert rate_history(loaded)[1].tobytes() == before[1].tobytes()
    # The plain optimizer reads the same file (it ignores the extra group).
    plain = make_model()
    plain.compile(keras.optimizers.SGD(SCHEDULE, momentum=0.9), loss="mse")
    plain.optimizer.build(plain.trainable_variables)  # plain Keras skips unbuilt ones
    plain.load_weights(path)
    assert int(plain.optimizer.iterations) == 6
    # A file of the plain optimizer: the history no longer describes the state.
    plain_path = tmp_path / "plain.weights.h5"
    plain.save_weights(plain_path)
    model.load_weights(plain_path)
    assert rate_history(model)[0].tolist() == []


def test_loading_into_a_smaller_buffer_keeps_the_newest(tmp_path: Path) -> None:
    """A file written with K=8 loads into K=3, keeping the 3 newest updates."""
    model = trained(8)
    path = tmp_path / "m.weights.h5"
    model.save_weights(path)
    target = make_model()
    target.compile(keep_rate_history(IntrospectableSGD(SCHEDULE, momentum=0.9), 3), loss="mse")
    target.fit(*make_data(8), batch_size=8, epochs=1, verbose=0)
    target.load_weights(path)
    steps, rates = rate_history(target)
    assert steps.tolist() == [4, 5, 6]
    assert rates.tobytes() == rate_history(model)[1][-3:].tobytes()


@pytest.mark.tf_only
def test_tf_checkpoint_round_trip(tmp_path: Path) -> None:
    """tf.train.Checkpoint restores the buffer, also into a fresh, unbuilt optimizer."""
    import tensorflow as tf

    model = trained(4)
    path = tf.train.Checkpoint(optimizer=model.optimizer).save(str(tmp_path / "ckpt"))
    fresh = keep_rate_history(IntrospectableSGD(SCHEDULE, momentum=0.9), 4)
    tf.train.Checkpoint(optimizer=fresh).restore(path)
    fresh.build(make_model().trainable_variables)
    assert rate_history(fresh)[1].tobytes() == rate_history(model)[1].tobytes()
    assert rate_history(fresh)[0].tolist() == [3, 4, 5, 6]
