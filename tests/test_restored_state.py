"""Restored feature state acts on the next update, and damaged feature values change nothing.

Two generated matrices over the opt-in features (the plateau multiplier, the
rate history, diagnostics):

* {feature} x {loaded after training (the train function is traced), loaded
  before training (built, not traced)} x {``.weights.h5``, ``.keras`` through
  ``load_weights``, ``tf.train.Checkpoint``}: the next ``fit`` gives weights,
  rates and feature state identical, bit for bit, to a twin that loads the
  same file into a fresh model before its first ``fit``;
* {feature} x {damaged values}: the load raises a ``ValueError`` that names the
  file, and every variable of the optimizer and its state keeps its value.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import pytest
from helpers import SCHEDULE, make_data, make_model, optimizer_state, sync, weights_of

import introspect_opt
from introspect_opt import IntrospectableSGD, ScaleLearningRateOnPlateau
from introspect_opt._features.plateau import multiplier
from introspect_opt._keras3.resolve import unwrap

FEATURES = ["multiplier", "history", "diagnostics"]
FORMATS = [
    "weights.h5",
    "keras",
    pytest.param("checkpoint", marks=pytest.mark.tf_only),
]
STEPS_PER_EPOCH = 4


def fit(model: Any, epochs: int = 1, callbacks: list[Any] | None = None) -> None:
    x, y = make_data(8 * STEPS_PER_EPOCH)
    model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, shuffle=False, callbacks=callbacks)


def compiled(seed: int, diagnostics: bool = False) -> Any:
    """A model with an introspectable SGD (schedule, momentum); no feature unless asked."""
    model = make_model(seed=seed)
    optimizer = IntrospectableSGD(SCHEDULE, momentum=0.9)
    if diagnostics:
        introspect_opt.record_diagnostics(optimizer)
    model.compile(optimizer, loss="mse")
    return model


def always_plateau() -> ScaleLearningRateOnPlateau:
    """Halves the multiplier at the end of every epoch after the first."""
    return ScaleLearningRateOnPlateau("loss", factor=0.5, patience=0, min_delta=1e9)


@functools.cache
def written(feature: str, directory: str) -> dict[str, str]:
    """Files (every format) of a run that had ``feature`` on, in ``directory``."""
    model = compiled(seed=7)
    callbacks: list[Any] = []
    if feature == "multiplier":
        callbacks = [always_plateau()]
    elif feature == "history":
        introspect_opt.keep_rate_history(model, 6)
    else:
        introspect_opt.record_diagnostics(model)
    fit(model, epochs=3, callbacks=callbacks)
    sync(model)
    if feature == "multiplier":
        assert multiplier(model.optimizer) == 0.25  # the file holds a real scale
    base = Path(directory) / feature
    base.mkdir()
    paths = {"weights.h5": str(base / "m.weights.h5"), "keras": str(base / "m.keras")}
    model.save_weights(paths["weights.h5"])
    model.save(paths["keras"])
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
        paths["checkpoint"] = checkpoint.write(str(base / "ckpt"))
    return paths


def load(model: Any, paths: dict[str, str], file_format: str) -> None:
    if file_format == "checkpoint":
        import tensorflow as tf

        checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
        checkpoint.read(paths[file_format]).assert_existing_objects_matched()
    else:
        model.load_weights(paths[file_format])


def observed(model: Any) -> dict[str, Any]:
    """Everything the next updates decided: weights, optimizer state, rates, features."""
    optimizer = unwrap(sync(model))[0]
    steps, rates = introspect_opt.rate_history(optimizer)
    diagnostics = introspect_opt.last_update_diagnostics(optimizer)
    return {
        "weights": [w.tobytes() for w in weights_of(model)],
        "optimizer": [v.tobytes() for v in optimizer_state(optimizer)],
        "applied": np.float32(optimizer.current_learning_rate).tobytes(),
        "next": np.float32(keras.ops.convert_to_numpy(optimizer.learning_rate)).tobytes(),
        "multiplier": multiplier(optimizer),
        "history": (steps.tolist(), rates.tobytes()),
        "diagnostics": {k: np.float32(v).tobytes() for k, v in diagnostics.items()},
    }


@functools.cache
def twin(feature: str, file_format: str, diagnostics: bool, directory: str) -> dict[str, Any]:
    """A fresh model that loads the file before its first fit, after one epoch."""
    model = compiled(seed=3, diagnostics=diagnostics)
    load(model, written(feature, directory), file_format)
    fit(model)
    return observed(model)


TF_BACKEND = keras.backend.backend() == "tensorflow"
# Known limit (docs/logging.md): on TensorFlow a plateau multiplier loaded into a
# schedule-driven optimizer after fit traced its step acts once the step is
# traced again. Gating the schedule behind a dormant multiplier from build made
# the weights differ from plain SGD's in the last bit: bit-identity comes first.
MULTIPLIER_AFTER_TRACING = pytest.mark.xfail(
    strict=True, reason="a multiplier loaded after tracing waits for a retrace on TensorFlow"
)


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("restored_state"))


@pytest.mark.parametrize("file_format", FORMATS)
@pytest.mark.parametrize("when", ["after_training", "before_training"])
@pytest.mark.parametrize("feature", FEATURES)
def test_restored_state_acts_on_the_next_update(
    feature: str, when: str, file_format: str, directory: str, request: pytest.FixtureRequest
) -> None:
    """The next fit after a load equals a twin's first fit after it, bit for bit."""
    if feature == "multiplier" and when == "after_training" and TF_BACKEND:
        request.applymarker(MULTIPLIER_AFTER_TRACING)
    # Diagnostics are not created by files: recorded (from the start) or not, alike.
    for diagnostics in [False, True] if feature == "diagnostics" else [False]:
        model = compiled(seed=5, diagnostics=diagnostics)
        if when == "after_training":
            fit(model)  # traces the train function, the feature off
        else:
            model.optimizer.build(model.trainable_variables)
        load(model, written(feature, directory), file_format)
        fit(model)
        result = observed(model)
        expected = twin(feature, file_format, diagnostics, directory)
        assert result == expected
        # Not vacuous: the restored state is there, and acted.
        if feature == "multiplier":
            assert result["multiplier"] == 0.25
        elif feature == "history":
            file_steps = list(range(3 * STEPS_PER_EPOCH - 5, 3 * STEPS_PER_EPOCH + 1))
            new_steps = list(range(3 * STEPS_PER_EPOCH + 1, 4 * STEPS_PER_EPOCH + 1))
            assert result["history"][0] == (file_steps + new_steps)[-6:]
        elif diagnostics:
            values = introspect_opt.last_update_diagnostics(model)
            assert values and all(np.isfinite(v) for v in values.values())


VARIANTS = [
    pytest.param(
        {"jit_compile": True},
        id="xla",
        marks=pytest.mark.skipif(
            keras.backend.backend() == "torch",
            reason="jit_compile=True is torch.compile on this backend (minutes per model)",
        ),
    ),
    pytest.param(
        {"steps_per_execution": 2},
        id="steps_per_execution",
        marks=pytest.mark.skipif(
            keras.backend.backend() == "torch", reason="Keras refuses it on torch"
        ),
    ),
    pytest.param({"replicas": 2}, id="mirrored", marks=pytest.mark.tf_only),
    pytest.param({"policy": "mixed_float16"}, id="mixed_float16"),
]


@pytest.mark.slow  # XLA compiles, a strategy starts: 5-25 s each on 2 cores
@pytest.mark.parametrize("variant", VARIANTS)
def test_restored_state_acts_in_every_kind_of_step(
    variant: dict[str, Any], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """XLA, several steps per execution, replicas, loss scaling: a traced step acts too.

    Compared with a model built (not traced) before the same load: under mixed
    precision a fresh model's LossScaleOptimizer skips its own state when the
    file is loaded before its build, a Keras limitation (see _persistence).
    """
    if TF_BACKEND:
        request.applymarker(MULTIPLIER_AFTER_TRACING)
    options = dict(variant)
    replicas = options.pop("replicas", 1)
    policy = options.pop("policy", "float32")
    request.addfinalizer(lambda: keras.config.set_dtype_policy("float32"))
    keras.config.set_dtype_policy(policy)

    def trained(seed: int, when: str | None) -> Any:
        scope: Any = contextlib.nullcontext
        if replicas > 1:
            from test_distributed import mirrored_strategy

            scope = mirrored_strategy(replicas).scope
        with scope():
            model = make_model(seed=seed)
            model.compile(IntrospectableSGD(SCHEDULE, momentum=0.9), loss="mse", **options)
            if when == "before_training":
                model.optimizer.build(model.trainable_variables)
        if when == "after_training":
            fit(model)
        return model

    writer = trained(7, None)
    introspect_opt.keep_rate_history(writer, 6)
    fit(writer, epochs=3, callbacks=[always_plateau()])
    writer.save_weights(tmp_path / "m.weights.h5")
    results = []
    for when in ("after_training", "before_training"):
        model = trained(5, when)
        model.load_weights(tmp_path / "m.weights.h5")
        fit(model)
        results.append(observed(model))
    assert results[0] == results[1]
    assert results[0]["multiplier"] == 0.25
    assert results[0]["history"][0]  # recorded


def test_features_switched_on_after_training_act_on_the_next_update() -> None:
    """keep_rate_history (given the optimizer) and record_diagnostics (given the model)."""
    model = compiled(seed=5)
    fit(model)  # traces the train function, the features off
    introspect_opt.keep_rate_history(model.optimizer, 3)
    introspect_opt.record_diagnostics(model)
    fit(model)
    steps, _ = introspect_opt.rate_history(model)
    assert steps.tolist() == [2 * STEPS_PER_EPOCH - 2, 2 * STEPS_PER_EPOCH - 1, 2 * STEPS_PER_EPOCH]
    values = introspect_opt.last_update_diagnostics(model)
    assert values and all(np.isfinite(v) for v in values.values())


@pytest.mark.tf_only
def test_diagnostics_switched_on_for_a_traced_optimizer_warn() -> None:
    """Given only the optimizer, record_diagnostics cannot retrace fit's function: it says so."""
    model = compiled(seed=5)
    fit(model)
    with pytest.warns(UserWarning, match="record_diagnostics\\(model\\)"):
        introspect_opt.record_diagnostics(model.optimizer)


# --- damaged values ----------------------------------------------------------

# Per feature: (name, entry, damaged value). Each passes the shape and dtype
# checks of the file format, or not, and must be refused before any change.
DAMAGES: list[tuple[str, str, str, Any]] = [
    ("multiplier", "nan", "learning_rate_multiplier", np.float32(np.nan)),
    ("multiplier", "inf", "learning_rate_multiplier", np.float32(np.inf)),
    ("multiplier", "negative", "learning_rate_multiplier", np.float32(-0.5)),
    ("multiplier", "over_float32", "learning_rate_multiplier", np.float64(1e300)),
    ("multiplier", "vector", "learning_rate_multiplier", np.ones((2,), np.float32)),
    ("history", "uint64_max", "rate_history_updates", np.full(6, 2**64 - 1, np.uint64)),
    ("history", "negative", "rate_history_updates", np.array([7, 8, 9, 10, 11, -5])),
    ("history", "zero", "rate_history_updates", np.array([7, 8, 9, 10, 11, 0])),
    ("history", "not_increasing", "rate_history_updates", np.array([12, 11, 10, 9, 8, 7])),
    ("history", "after_the_count", "rate_history_updates", np.array([13, 8, 9, 10, 11, 12])),
    ("history", "shorter", "rate_history_updates", np.array([7, 8, 9])),
    ("history", "rates_matrix", "rate_history", np.zeros((6, 1), np.float32)),
    ("diagnostics", "vector", "gradient_norm", np.ones((3,), np.float32)),
    ("diagnostics", "text", "update_norm", np.array(b"1.0")),
]


def damaged(feature: str, entry: str, value: Any, directory: str, name: str) -> str:
    """A copy of the feature's .weights.h5 with one state entry replaced."""
    source = Path(written(feature, directory)["weights.h5"])
    target = source.parent / f"damaged_{name}.weights.h5"
    target.write_bytes(source.read_bytes())
    with h5py.File(target, "r+") as file:
        found: list[str] = []
        file.visit(lambda key: found.append(key) if key.endswith(f"/{entry}") else None)
        assert len(found) == 1, found
        del file[found[0]]
        file[found[0]] = value
    return str(target)


def state_values(optimizer: Any) -> dict[str, bytes]:
    """Every variable of the optimizer and its state, as bytes."""
    values = {f"slot{i}": v.tobytes() for i, v in enumerate(optimizer_state(optimizer))}
    for key, value in optimizer._introspection_state.entries().items():
        values[key] = value.tobytes()
    values["multiplier"] = np.float64(multiplier(optimizer)).tobytes()
    return values


@pytest.mark.parametrize(
    ("feature", "entry", "value"),
    [pytest.param(f, e, v, id=f"{f}-{n}") for f, n, e, v in DAMAGES],
)
def test_damaged_feature_values_are_refused_before_anything_changes(
    feature: str, entry: str, value: Any, directory: str, request: pytest.FixtureRequest
) -> None:
    """A damaged value raises an error naming the file; every variable keeps its value."""
    path = damaged(feature, entry, value, directory, request.node.callspec.id)
    model = compiled(seed=5)
    introspect_opt.keep_rate_history(model, 6)  # the target has each feature, in its own state
    introspect_opt.record_diagnostics(model)
    fit(model, epochs=2, callbacks=[ScaleLearningRateOnPlateau("loss", patience=0, min_delta=1e9)])
    assert multiplier(model.optimizer) == pytest.approx(0.1)
    before = state_values(sync(model))
    with pytest.raises(ValueError, match="Cannot restore") as raised:
        model.load_weights(path)
    assert path in str(raised.value)
    assert state_values(sync(model)) == before
