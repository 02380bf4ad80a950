"""A ParameterServerStrategy job, run by tests/test_parameter_server.py.

Usage: ``python parameter_server_job.py '<json config>'``, in two processes:

* ``role="servers"``: one process starts the parameter server and the two
  workers (``tf.distribute.Server`` each, on the loopback ports the test
  chose) and serves until the test kills it;
* ``role="coordinator"``: the chief, which connects to them and runs the job.
  (With the servers in the coordinator's own process, fetching the results
  of 200 asynchronous steps failed once in 8 runs with gRPC "Unable to parse
  request", TF 2.21; with separate processes, in none of 13.) Connecting
  changes TensorFlow's global eager context, another reason to keep it out
  of the test process.

The coordinator runs three parts, each reported under its own key of the JSON
report written to ``report_path``:

* ``"fit"``: ``model.fit`` under the strategy, and what it raised;
* ``"sync"``: a ``ClusterCoordinator`` custom loop, one step scheduled and
  joined at a time, training ``IntrospectableSGD`` and plain ``SGD`` in
  lockstep on the same batches;
* ``"async"``: many steps scheduled without a join in between, then one
  synchronous step.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from typing import Any

INPUTS = 4
GLOBAL_BATCH = 8


def _bits(value: Any) -> int:
    import numpy as np

    return int(np.asarray(value, dtype=np.float32).reshape(()).view(np.int32))


def _cluster_spec(tf: Any, ports: dict[str, list[int]]) -> Any:
    return tf.train.ClusterSpec(
        {job: [f"127.0.0.1:{port}" for port in job_ports] for job, job_ports in ports.items()}
    )


def _serve(tf: Any, config: dict[str, Any]) -> None:
    """Starts the parameter server and the workers in this process and serves forever."""
    cluster = _cluster_spec(tf, config["ports"])
    worker_config = tf.compat.v1.ConfigProto()
    # Fewer inter-op threads than workers + 1 can deadlock the cluster
    # (see tensorflow/python/distribute/multi_worker_test_base.py).
    worker_config.inter_op_parallelism_threads = len(config["ports"]["worker"]) + 1
    servers = [
        tf.distribute.Server(
            cluster,
            job_name=job,
            task_index=index,
            protocol="grpc",
            config=worker_config if job == "worker" else None,
            start=True,
        )
        for job, job_ports in config["ports"].items()
        for index in range(len(job_ports))
    ]
    servers[0].join()


def _model(keras: Any) -> Any:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((INPUTS,)), keras.layers.Dense(1)])


def _schedule(keras: Any) -> Any:
    return keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=5, decay_rate=0.5)


def _dataset_fn(tf: Any) -> Any:
    def dataset_fn() -> Any:
        x = tf.random.stateless_normal((GLOBAL_BATCH, INPUTS), seed=[1, 2])
        y = tf.reduce_sum(x, axis=1, keepdims=True)
        return tf.data.Dataset.from_tensors((x, y)).repeat()

    return dataset_fn


def _loss(tf: Any, net: Any, x: Any, y: Any) -> Any:
    error = net(x, training=True) - y
    return tf.reduce_mean(error * error)


def _array_bits(variables: Any) -> list[list[int]]:
    import numpy as np

    return [np.asarray(v.numpy()).ravel().view(np.int32).tolist() for v in variables]


def _training(tf: Any, keras: Any, strategy: Any, with_plain: bool) -> dict[str, Any]:
    """A coordinator, models and optimizers, and a step function that returns rates.

    The step returns ``(current_learning_rate, planned)`` read in the step:
    ``planned`` is ``optimizer.learning_rate`` read before the update, which
    is ``schedule(iterations)`` computed the way Keras computes it in ``apply``.
    With ``with_plain``, a plain ``SGD`` trains an identical model in lockstep.
    """
    from introspect_opt import IntrospectableSGD

    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    with strategy.scope():
        model, reference = _model(keras), _model(keras)
        optimizer = IntrospectableSGD(_schedule(keras), momentum=0.9)
        plain = keras.optimizers.SGD(_schedule(keras), momentum=0.9)
        optimizer.build(model.trainable_variables)
        plain.build(reference.trainable_variables)
    iterator = iter(coordinator.create_per_worker_dataset(_dataset_fn(tf)))

    def train(net: Any, opt: Any, x: Any, y: Any) -> None:
        with tf.GradientTape() as tape:
            loss = _loss(tf, net, x, y)
        grads = tape.gradient(loss, net.trainable_variables)
        opt.apply_gradients(zip(grads, net.trainable_variables, strict=True))

    @tf.function
    def step(iterator: Any) -> Any:
        def step_fn(x: Any, y: Any) -> tuple[Any, Any]:
            planned = optimizer.learning_rate
            train(model, optimizer, x, y)
            if with_plain:
                train(reference, plain, x, y)
            return optimizer.current_learning_rate, planned

        x, y = next(iterator)
        return strategy.run(step_fn, args=(x, y))

    def schedule() -> Any:
        return coordinator.schedule(step, args=(iterator,))

    return {
        "coordinator": coordinator,
        "schedule": schedule,
        "model": model,
        "optimizer": optimizer,
        "reference": reference,
        "plain": plain,
    }


def _row(result: Any, optimizer: Any) -> dict[str, Any]:
    in_step, planned = result.fetch()
    return {
        "in_step": _bits(in_step),
        "planned": _bits(planned),
        "iterations": int(optimizer.iterations.numpy()),
        "coordinator": _bits(optimizer.current_learning_rate),
    }


def _sync(tf: Any, keras: Any, strategy: Any, config: dict[str, Any]) -> dict[str, Any]:
    job = _training(tf, keras, strategy, with_plain=True)
    initial = _array_bits(job["model"].weights)
    rows = []
    for _ in range(config["sync_steps"]):
        result = job["schedule"]()
        job["coordinator"].join()
        rows.append(_row(result, job["optimizer"]))
    return {
        "rows": rows,
        "initial": initial,
        "state": {
            "model": _array_bits(job["model"].weights),
            "optimizer": _array_bits(job["optimizer"].variables),
            "reference": _array_bits(job["reference"].weights),
            "plain": _array_bits(job["plain"].variables),
        },
    }


def _fit(tf: Any, keras: Any, strategy: Any) -> dict[str, Any]:
    import numpy as np

    # The full traceback tells the test which Keras function raised.
    keras.config.disable_traceback_filtering()
    with strategy.scope():
        model = _model(keras)
        model.compile(keras.optimizers.SGD(0.01), loss="mse")
    x = np.ones((GLOBAL_BATCH * 2, INPUTS), "float32")
    try:
        model.fit(x, x[:, :1], batch_size=GLOBAL_BATCH, epochs=1, verbose=0)
    except Exception as error:
        frames = [frame.name for frame in traceback.extract_tb(error.__traceback__)]
        return {"raised": type(error).__name__, "message": str(error)[:2000], "frames": frames}
    return {"raised": None, "iterations": int(model.optimizer.iterations.numpy())}


def _async(tf: Any, keras: Any, strategy: Any, config: dict[str, Any]) -> dict[str, Any]:
    job = _training(tf, keras, strategy, with_plain=False)
    optimizer, coordinator = job["optimizer"], job["coordinator"]
    started = time.monotonic()
    results = [job["schedule"]() for _ in range(config["async_steps"])]
    coordinator.join()
    seconds = time.monotonic() - started
    after_async = {
        "iterations": int(optimizer.iterations.numpy()),
        "coordinator": _bits(optimizer.current_learning_rate),
    }
    rows = [_row(result, optimizer) for result in results]
    # Then one synchronous step again.
    result = job["schedule"]()
    coordinator.join()
    return {
        "scheduled": config["async_steps"],
        "seconds": seconds,
        "in_step": [row["in_step"] for row in rows],
        "planned": [row["planned"] for row in rows],
        "after_async": after_async,
        "sync_after": _row(result, optimizer),
    }


def main() -> None:
    config = json.loads(sys.argv[1])
    # The last line of defence against orphans: even if the test process dies
    # without reaping this one, SIGALRM's default action ends it.
    signal.alarm(config["max_seconds"])
    report: dict[str, Any] = {}
    code = 0
    try:
        import keras
        import tensorflow as tf

        if config["role"] == "servers":
            _serve(tf, config)  # returns only if a server fails
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            _cluster_spec(tf, config["ports"]), rpc_layer="grpc"
        )
        strategy = tf.distribute.ParameterServerStrategy(resolver)
        # fit first, as a user would try it: before any coordinator exists.
        report["fit"] = _fit(tf, keras, strategy)
        report["sync"] = _sync(tf, keras, strategy, config)
        report["async"] = _async(tf, keras, strategy, config)
    except BaseException:  # reported to the test, whatever it is
        code = 2
        report["error"] = traceback.format_exc()[-6000:]
    tmp = f"{config['report_path']}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f)
    os.replace(tmp, config["report_path"])
    sys.stdout.flush()
    sys.stderr.flush()
    # Leave without waiting for gRPC threads, which may never stop.
    os._exit(code)


if __name__ == "__main__":
    main()
