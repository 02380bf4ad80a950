"""record_diagnostics / last_update_diagnostics: per-update norms, kept on the device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from helpers import JIT_MODES, SCHEDULE, make_data, make_model, weights_of

from introspect_opt import (
    IntrospectableAdamW,
    IntrospectableSGD,
    ScaleLearningRateOnPlateau,
    keep_rate_history,
    last_update_diagnostics,
    record_diagnostics,
)


def expected(before: list[np.ndarray], after: list[np.ndarray], grads: list[np.ndarray]) -> Any:
    def norm(arrays: list[np.ndarray]) -> float:
        return float(np.sqrt(sum(np.sum(np.square(a.astype("float64"))) for a in arrays)))

    update = norm([b - a for a, b in zip(before, after, strict=True)])
    return {
        "gradient_norm": norm(grads),
        "update_norm": update,
        "update_to_weight_ratio": update / norm(before),
    }


def test_norms_of_one_update_with_momentum_and_weight_decay() -> None:
    """The three values match NumPy's, decoupled weight decay included in the update."""
    optimizer = record_diagnostics(IntrospectableAdamW(0.05, weight_decay=0.1))
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in [(3, 4), (4,)]]
    for _ in range(3):
        before = [keras.ops.convert_to_numpy(v).copy() for v in variables]
        grads = [rng.normal(size=v.shape).astype("float32") for v in variables]
        tensors = [keras.ops.convert_to_tensor(g) for g in grads]
        optimizer.apply_gradients(zip(tensors, variables, strict=True))
        after = [keras.ops.convert_to_numpy(v) for v in variables]
        got = last_update_diagnostics(optimizer)
        for key, value in expected(before, after, grads).items():
            np.testing.assert_allclose(got[key], value, rtol=2e-5, err_msg=key)


@pytest.mark.parametrize("jit", JIT_MODES)
def test_every_opt_in_state_leaves_weights_bit_identical(jit: Any) -> None:
    """Diagnostics, history and the multiplier at 1 change no weight bit under fit."""
    x, y = make_data(48)
    plain = make_model()
    plain.compile(keras.optimizers.SGD(SCHEDULE, momentum=0.9), loss="mse", jit_compile=jit)
    plain.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    model = make_model()
    optimizer = keep_rate_history(record_diagnostics(IntrospectableSGD(SCHEDULE, momentum=0.9)), 4)
    model.compile(optimizer, loss="mse", jit_compile=jit)
    plateau = ScaleLearningRateOnPlateau("loss", patience=100)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False, callbacks=[plateau])
    for a, b in zip(weights_of(plain), weights_of(model), strict=True):
        assert a.tobytes() == b.tobytes()
    assert all(np.isfinite(v) for v in last_update_diagnostics(model).values())


def test_fresh_after_updates_nan_after_a_file_without_them(tmp_path: Path) -> None:
    """Values describe the last update; a file that lacks them leaves nan, not stale numbers."""
    model = make_model()
    model.compile(record_diagnostics(IntrospectableSGD(0.1)), loss="mse")
    assert last_update_diagnostics(model) == {}  # not built: nothing recorded yet
    model.fit(*make_data(16), batch_size=8, epochs=1, verbose=0)
    assert all(np.isfinite(v) for v in last_update_diagnostics(model).values())
    plain = make_model()
    plain.compile(keras.optimizers.SGD(0.1), loss="mse")
    plain.fit(*make_data(24), batch_size=8, epochs=1, verbose=0)
    plain.save_weights(tmp_path / "plain.weights.h5")
    model.load_weights(tmp_path / "plain.weights.h5")
    values = last_update_diagnostics(model)
    assert set(values) == {"gradient_norm", "update_norm", "update_to_weight_ratio"}
    assert all(np.isnan(v) for v in values.values())


def test_plain_optimizer_is_refused() -> None:
    """A plain optimizer gets the error that names the fix."""
    with pytest.raises(TypeError, match=r"introspect_opt.introspect\(optimizer\)"):
        record_diagnostics(keras.optimizers.Adam())


@pytest.mark.tf_only
def test_gradient_norm_is_that_of_the_replica_sum() -> None:
    """Under MirroredStrategy the norms equal those of one device on the same global batch."""
    import tensorflow as tf

    x, y = make_data(32)
    results = []
    for devices in (["/cpu:0"], ["/cpu:0", "/cpu:1"]):
        strategy = tf.distribute.MirroredStrategy(devices)
        with strategy.scope():
            model = make_model()
            model.compile(record_diagnostics(IntrospectableSGD(0.1, momentum=0.9)), loss="mse")
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
        results.append(last_update_diagnostics(model))
    for key in results[0]:
        np.testing.assert_allclose(results[1][key], results[0][key], rtol=1e-5, err_msg=key)


def test_the_names_before_0_2_still_work_and_warn() -> None:
    """update_diagnostics and applied_learning_rates answer as the new names, with a warning."""
    import introspect_opt

    optimizer = record_diagnostics(IntrospectableSGD(0.1))
    with pytest.warns(DeprecationWarning, match="renamed last_update_diagnostics"):
        assert introspect_opt.update_diagnostics(optimizer) == {}
    with pytest.warns(DeprecationWarning, match="renamed preview_learning_rates"):
        old = introspect_opt.applied_learning_rates(optimizer, [0, 1])
    assert old.tolist() == introspect_opt.preview_learning_rates(optimizer, [0, 1]).tolist()


@pytest.mark.tf_only
@pytest.mark.parametrize("jit", JIT_MODES)
def test_a_sparse_gradient_norm_is_that_of_the_gradient_applied(jit: Any) -> None:
    """docs/logging.md: an id seen twice in a batch counts once, its rows summed (2.83, not 2.0)."""
    import tensorflow as tf

    optimizer = record_diagnostics(IntrospectableSGD(1.0))
    table = keras.Variable(np.zeros((4, 2), "float32"))
    # Rows for ids 1, 3, 1: the update adds both id-1 rows to row 1.
    rows = tf.constant([[1.0, 1.0], [0.5, -0.5], [1.0, 1.0]])
    gradient = tf.IndexedSlices(rows, tf.constant([1, 3, 1]), tf.constant([4, 2]))

    def step() -> None:
        optimizer.apply_gradients([(gradient, table)])

    (tf.function(step, jit_compile=True) if jit else step)()
    applied = -keras.ops.convert_to_numpy(table)  # SGD at rate 1: the applied gradient
    np.testing.assert_allclose(applied, [[0, 0], [2, 2], [0, 0], [0.5, -0.5]])
    got = last_update_diagnostics(optimizer)["gradient_norm"]
    np.testing.assert_allclose(got, np.linalg.norm(applied), rtol=1e-6)
    np.testing.assert_allclose(got, np.sqrt(8.5), rtol=1e-6)
