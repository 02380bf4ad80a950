"""ParameterServerStrategy: 1 parameter server and 2 workers on loopback, ClusterCoordinator loops.

One job (``distributed_workers/parameter_server_job.py``: a process serving the
cluster and a coordinator process) serves every test of this module: it tries
``model.fit``, runs synchronous steps with ``IntrospectableSGD`` and plain
``SGD`` in lockstep, then asynchronous steps, and reports what it saw.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from distributed_workers.processes import (
    Finished,
    free_loopback_ports,
    job,
    job_env,
    lost_port_race,
)
from helpers import schedule_value

pytestmark = [pytest.mark.tf_only, pytest.mark.slow]

SCRIPT = "parameter_server_job.py"
SYNC_STEPS = 6
ASYNC_STEPS = 200
JOB_TIMEOUT_S = 150
SCHEDULE = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=5, decay_rate=0.5)


def run_job(directory: Path) -> Finished:
    """Starts the cluster and the coordinator, waits for the coordinator, reaps both."""
    for attempt in range(2):  # a chosen port can be taken before the server binds it
        with job(directory / f"attempt{attempt}") as running:
            worker_a, worker_b, ps, chief = free_loopback_ports(4)
            ports = {"worker": [worker_a, worker_b], "ps": [ps]}
            config = {"ports": ports, "sync_steps": SYNC_STEPS, "async_steps": ASYNC_STEPS}
            servers = running.start(SCRIPT, {**config, "role": "servers"}, job_env())
            coordinator = running.start(
                SCRIPT,
                {**config, "role": "coordinator", "ports": {**ports, "chief": [chief]}},
                job_env(),
            )
            running.wait([coordinator], JOB_TIMEOUT_S)
            results = [running.result(servers), running.result(coordinator)]
        if not lost_port_race(results):
            break
    return results[1]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The coordinator's report of the whole job."""
    result = run_job(tmp_path_factory.mktemp("parameter_server"))
    assert result.returncode == 0 and result.report is not None, result.describe()
    return result.report


def as_float(value_bits: int) -> np.float32:
    return np.int32(value_bits).view(np.float32)


@functools.cache
def schedule_values() -> np.ndarray:
    """The schedule at every step the job can reach, evaluated once."""
    return np.array([schedule_value(SCHEDULE, c) for c in range(ASYNC_STEPS + 1)])


def schedule_step(value_bits: int, steps: int) -> int:
    """The one step c in [0, steps) at which the schedule gives this value.

    Up to rounding: the step evaluates the schedule in a graph, this module
    eagerly; at small rates float32 `pow` differs by more than 1e-6 between
    the two. Neighbouring steps differ by 13%.
    """
    close = np.isclose(as_float(value_bits), schedule_values()[:steps], rtol=1e-5, atol=0)
    matches = np.flatnonzero(close).tolist()
    assert len(matches) == 1, (as_float(value_bits), matches)
    return int(matches[0])


def test_sync_steps_read_the_applied_rate_in_the_step_and_on_the_coordinator(
    report: dict[str, Any],
) -> None:
    """Joining each step, the step and the coordinator both read the rate it applied."""
    rows = report["sync"]["rows"]
    assert len(rows) == SYNC_STEPS
    for step, row in enumerate(rows):
        assert row["iterations"] == step + 1
        # `planned` is schedule(iterations) read in the step before the update.
        assert row["in_step"] == row["planned"] == row["coordinator"], row
        assert schedule_step(row["planned"], SYNC_STEPS) == step
    assert len({row["coordinator"] for row in rows}) == SYNC_STEPS


def test_sync_steps_update_weights_bit_identically_to_plain_sgd(report: dict[str, Any]) -> None:
    """Variables on the parameter server end bit-identical to plain SGD's, updated in lockstep."""
    sync = report["sync"]
    state = sync["state"]
    assert state["model"] == state["reference"]
    assert state["optimizer"] == state["plain"]
    assert state["model"] != sync["initial"]  # it trained


def test_fit_raises_under_parameter_server_strategy(report: dict[str, Any]) -> None:
    """Keras 3 model.fit has no ParameterServerStrategy support: it raises before the first step."""
    fit = report["fit"]
    assert fit["raised"] == "ValueError", fit
    assert fit["message"] == (
        "To use this dataset, you need to pass this dataset to "
        "ClusterCoordinator.create_per_worker_dataset."
    )
    assert "_maybe_symbolic_build" in fit["frames"], fit["frames"]


def test_async_steps_lose_iterations_but_every_rate_comes_from_the_schedule(
    report: dict[str, Any], record_property: Any
) -> None:
    """Unjoined steps may lose iterations but read only schedule values; a joined step is exact."""
    run = report["async"]
    iterations = run["after_async"]["iterations"]
    record_property("async_steps_scheduled", ASYNC_STEPS)
    record_property("iterations_after_async_steps", iterations)
    print(f"{ASYNC_STEPS} asynchronous steps: iterations = {iterations}")
    # Keras's assign_add is a read then a write: increments can be lost, never invented.
    assert 1 <= iterations <= ASYNC_STEPS
    for value in [*run["in_step"], *run["planned"], run["after_async"]["coordinator"]]:
        schedule_step(value, ASYNC_STEPS)
    after = run["sync_after"]
    assert after["iterations"] == iterations + 1
    assert after["in_step"] == after["planned"] == after["coordinator"], after
    assert schedule_step(after["planned"], ASYNC_STEPS + 1) == iterations
