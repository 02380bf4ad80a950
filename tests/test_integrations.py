"""The applied rate in MLflow and Weights & Biases, read back through each tool.

The real packages, offline: MLflow with a SQLite tracking store, W&B in
offline mode. Each test trains a Dense(1) for two epochs of three steps under
a schedule that halves the rate at every step, reads the run back with the
tool's own reader, and compares with the rates the updates applied, computed
here from the schedule (the n-th update applies ``s(n - 1)``). Both tools
store float64 and the rates are float32, so the comparison is exact. Each test
skips where its tool is not installed (``pip install ".[integrations]"``).
The recipes, and what each tool names and numbers, are on
docs/integrations.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from helpers import make_data, schedule_value

import introspect_opt
from introspect_opt import LearningRateLogger

KEY = "sgd/learning_rate"
STEPS_PER_EPOCH = 3  # 12 samples in batches of 4
EPOCHS = 2
N = 2  # "every N steps": with 3 steps per epoch, some reads fall mid-epoch
EPOCH_ENDS = [STEPS_PER_EPOCH * (epoch + 1) for epoch in range(EPOCHS)]  # updates 3 and 6
EVERY_N = list(range(N, STEPS_PER_EPOCH * EPOCHS + 1, N))  # updates 2, 4, 6
INSTALL = 'pip install ".[integrations]"'

# MLflow 3.17's SQL store uses a loader strategy SQLAlchemy 2.1 deprecates: its noise, not ours.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning"),
]


def fit(callbacks: list[Any]) -> tuple[Any, Any]:
    """Trains a fresh Dense(1) with ``callbacks``; returns the model and its schedule."""
    keras.utils.set_random_seed(0)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(introspect_opt.IntrospectableSGD(schedule), loss="mse")
    x, y = make_data(n=4 * STEPS_PER_EPOCH)
    model.fit(x, y, batch_size=4, epochs=EPOCHS, verbose=0, callbacks=callbacks)
    return model, schedule


def applied(schedule: Any, updates: list[int]) -> np.ndarray:
    """The float32 rates that the updates numbered ``updates`` (from 1) applied, as float64."""
    return np.array([schedule_value(schedule, n - 1) for n in updates]).astype(np.float64)


def assert_exact(stored: list[float], expected: np.ndarray, model: Any = None) -> None:
    """The tool holds the float32 rates exactly, the last one being the model's current rate."""
    assert all(type(value) is float for value in stored), stored
    np.testing.assert_array_equal(np.array(stored, np.float64), expected)
    if model is not None:
        assert stored[-1] == float(introspect_opt.current_learning_rate(model))


# --- MLflow ------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """MLflow tracking into one SQLite file for the module (creating it takes seconds)."""
    module = pytest.importorskip("mlflow", reason=f"needs mlflow: {INSTALL}")
    previous = module.get_tracking_uri()
    folder = tmp_path_factory.mktemp("mlflow")
    module.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    # Artifacts next to the database, not in ./mlruns of wherever pytest runs.
    experiment = module.create_experiment("tests", artifact_location=str(folder / "artifacts"))
    module.set_experiment(experiment_id=experiment)
    yield module
    # set_experiment leaves the experiment's id (global and MLFLOW_EXPERIMENT_ID) and the last
    # run's id behind for whatever runs next in this process: a doc snippet that points MLflow
    # at its own new store would then look for experiment "tests" there and fail. MLflow has
    # no public call that forgets them, so its fluent module's globals are reset by name.
    fluent = module.tracking.fluent
    fluent._active_experiment_id = None
    fluent._last_active_run_id.set(None)
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    module.set_tracking_uri(previous)


def metric(mlflow: Any, run_id: str, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of a metric, read back from the tracking store."""
    history = mlflow.MlflowClient().get_metric_history(run_id, key)
    history = sorted(history, key=lambda entry: entry.step)
    return [entry.step for entry in history], [entry.value for entry in history]


def test_mlflow_callback_per_epoch(mlflow: Any) -> None:
    """MlflowCallback records each epoch's applied rate under the unchanged key, at step = epoch."""
    with mlflow.start_run() as run:
        model, schedule = fit([LearningRateLogger(), mlflow.keras.MlflowCallback()])
    steps, values = metric(mlflow, run.info.run_id, KEY)
    assert steps == list(range(EPOCHS))
    assert_exact(values, applied(schedule, EPOCH_ENDS), model)


def test_mlflow_callback_every_n_steps(mlflow: Any) -> None:
    """With log_every_n_steps=N and interval=N the rate lands at steps N, 2N, ...: update counts."""
    mlflow_callback = mlflow.keras.MlflowCallback(log_every_epoch=False, log_every_n_steps=N)
    with mlflow.start_run() as run:
        model, schedule = fit([LearningRateLogger(N), mlflow_callback])
    steps, values = metric(mlflow, run.info.run_id, KEY)
    assert steps == EVERY_N
    assert_exact(values, applied(schedule, EVERY_N), model)


@pytest.mark.parametrize(
    ("flavor", "interval"),
    [("keras", "epoch"), ("keras", N), ("tensorflow", "epoch")],
    ids=["keras-epoch", "keras-every-n", "tensorflow-epoch"],
)
def test_mlflow_autolog(mlflow: Any, flavor: str, interval: Any) -> None:
    """Autologging appends its callback after the user's, so the logger's key is recorded."""
    options: dict[str, Any] = {"log_models": False, "log_datasets": False, "silent": True}
    if interval != "epoch":
        options.update(log_every_epoch=False, log_every_n_steps=interval)
    if flavor == "tensorflow":
        options["checkpoint"] = False
    autolog = getattr(mlflow, flavor).autolog
    autolog(**options)
    try:
        model, schedule = fit([LearningRateLogger(interval)])
    finally:
        autolog(disable=True)
    run = mlflow.last_active_run()
    assert run.data.tags.get("mlflow.autologging") == flavor
    steps, values = metric(mlflow, run.info.run_id, KEY)
    updates = EPOCH_ENDS if interval == "epoch" else EVERY_N
    assert steps == (list(range(EPOCHS)) if interval == "epoch" else EVERY_N)
    assert_exact(values, applied(schedule, updates), model)


def test_mlflow_callback_before_the_logger_never_sees_the_key(mlflow: Any) -> None:
    """In the wrong order MLflow records the loss but no rate: each epoch's logs reach it first."""
    with mlflow.start_run() as run:
        model, _ = fit([mlflow.keras.MlflowCallback(), LearningRateLogger()])
    assert metric(mlflow, run.info.run_id, KEY) == ([], [])
    assert metric(mlflow, run.info.run_id, "loss")[0] == list(range(EPOCHS))
    assert len(model.history.history[KEY]) == EPOCHS  # History runs last: it has the key


# --- Weights & Biases --------------------------------------------------------

# wandb 0.31.0's WandbMetricsLogger reads optimizer.learning_rate with .numpy(), which a
# jax.Array lacks: on JAX it raises at its first log whenever the rate is a schedule,
# with any optimizer. Strict, so that a fixed release fails here and the docs get updated.
WANDB_JAX_CRASH = pytest.mark.xfail(
    keras.backend.backend() == "jax",
    raises=AttributeError,
    strict=True,
    reason="wandb's WandbMetricsLogger calls .numpy() on a jax.Array (schedules on JAX)",
)


@pytest.fixture
def wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """W&B in offline mode, writing under ``tmp_path``: no login, nothing sent."""
    module = pytest.importorskip("wandb", reason=f"needs wandb: {INSTALL}")
    for name, value in {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path),
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_ERROR_REPORTING": "false",
    }.items():
        monkeypatch.setenv(name, value)
    yield module
    if module.run is not None:
        module.run.finish()


def finish_and_read(run: Any) -> list[dict[str, Any]]:
    """Finishes an offline run; returns its logged rows, read from its file by W&B's own reader."""
    run.finish()
    read = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(Path(run.dir).parent)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    records = [json.loads(line) for line in read.stdout.splitlines()]
    return [record["history"]["item"] for record in records if record["type"] == "history"]


@WANDB_JAX_CRASH
def test_wandb_per_epoch(wandb: Any) -> None:
    """W&B gets the applied rate as epoch/sgd/learning_rate; its own epoch/learning_rate is next."""
    from wandb.integration.keras import WandbMetricsLogger

    run = wandb.init(project="introspect-opt")
    model, schedule = fit([LearningRateLogger(), WandbMetricsLogger()])
    rows = finish_and_read(run)
    assert [row["epoch/epoch"] for row in rows] == list(range(EPOCHS))
    assert_exact([row[f"epoch/{KEY}"] for row in rows], applied(schedule, EPOCH_ENDS), model)
    # W&B's own epoch/learning_rate is optimizer.learning_rate: the rate of the update after.
    next_rates = applied(schedule, [n + 1 for n in EPOCH_ENDS])
    assert_exact([row["epoch/learning_rate"] for row in rows], next_rates)


@WANDB_JAX_CRASH
@pytest.mark.parametrize("interval", ["batch", N], ids=["batch", "every-n"])
def test_wandb_every_n_steps(wandb: Any, interval: Any) -> None:
    """log_freq=N logs every N-th batch of each epoch; interval="batch" gives each row its rate."""
    from wandb.integration.keras import WandbMetricsLogger

    run = wandb.init(project="introspect-opt")
    model, schedule = fit([LearningRateLogger(interval), WandbMetricsLogger(log_freq=N)])
    rows = [row for row in finish_and_read(run) if "batch/batch_step" in row]
    # WandbMetricsLogger logs after each batch whose index within its epoch is a multiple of N
    # (updates 1, 3, 4, 6 here) and numbers the rows N apart (0, 2, 4, 6): not update counts.
    updates = [
        epoch * STEPS_PER_EPOCH + batch + 1
        for epoch in range(EPOCHS)
        for batch in range(0, STEPS_PER_EPOCH, N)
    ]
    assert [row["batch/batch_step"] for row in rows] == [N * i for i in range(len(updates))]
    next_rates = applied(schedule, [n + 1 for n in updates])
    assert_exact([row["batch/learning_rate"] for row in rows], next_rates)
    if interval == "batch":
        assert_exact([row[f"batch/{KEY}"] for row in rows], applied(schedule, updates), model)
    else:
        # LearningRateLogger(N) writes after updates N, 2N, ...: only rows at those carry it.
        carried = [n for n in updates if n % N == 0]
        assert [n for n, row in zip(updates, rows, strict=True) if f"batch/{KEY}" in row] == carried
        values = [row[f"batch/{KEY}"] for row in rows if f"batch/{KEY}" in row]
        assert_exact(values, applied(schedule, carried), model)


@WANDB_JAX_CRASH
def test_wandb_logger_before_the_rate_logger_never_sees_the_key(wandb: Any) -> None:
    """In the wrong order W&B records the loss but no applied rate."""
    from wandb.integration.keras import WandbMetricsLogger

    run = wandb.init(project="introspect-opt")
    model, _ = fit([WandbMetricsLogger(), LearningRateLogger()])
    rows = finish_and_read(run)
    assert [row["epoch/epoch"] for row in rows] == list(range(EPOCHS))
    assert all("epoch/loss" in row and f"epoch/{KEY}" not in row for row in rows)
    assert len(model.history.history[KEY]) == EPOCHS
