"""One worker of a MultiWorkerMirroredStrategy job, run by tests/test_multi_worker.py.

Usage: ``python multi_worker_job.py '<json config>'``, with ``TF_CONFIG`` set by
the test. The config's ``mode`` selects the job:

* ``"custom_loop"``: trains two identical models in lockstep on the same
  batches, one with ``IntrospectableSGD`` and one with plain ``SGD`` (same
  schedule and momentum), in a custom loop: ``strategy.run`` over a
  distributed ``tf.data`` dataset. Resumes from the latest checkpoint in
  ``checkpoint_dir`` if there is one, checkpoints every ``checkpoint_every``
  steps with the chief-writes pattern, and at the end writes the model's and
  the optimizer's state to ``final.weights.h5`` the same way. Both saves run
  inside ``strategy.scope()``, where users write them. With
  ``die_at_step`` (``freeze_at_step``) set, this worker sends itself SIGKILL
  (SIGSTOP) just before that step.
* ``"fit"``: ``model.fit`` with plain ``keras.optimizers.SGD``.

The worker writes a JSON report to ``report_path`` after every step and at the
end (atomically: a report is whole or absent) and exits with ``EXIT_OK``,
``EXIT_PEER_FAILURE`` (a collective failed because a peer is gone or stalled;
TensorFlow sometimes aborts the process with SIGABRT instead) or
``EXIT_ERROR`` (anything else; the traceback is in the report). It leaves through
``os._exit``, so that TensorFlow's gRPC server threads cannot keep the
process alive after the job ended.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import traceback
from typing import Any

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_PEER_FAILURE = 3

INPUTS = 8
HIDDEN = 16
GLOBAL_BATCH = 8


def _bits(value: Any) -> int:
    import numpy as np

    return int(np.asarray(value, dtype=np.float32).reshape(()).view(np.int32))


def _array_bits(variables: Any) -> list[list[int]]:
    import numpy as np

    return [np.asarray(v.numpy()).ravel().view(np.int32).tolist() for v in variables]


def _make_model(keras: Any) -> Any:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((INPUTS,)),
            keras.layers.Dense(HIDDEN, activation="relu"),
            keras.layers.Dense(1),
        ]
    )


def _schedule(keras: Any) -> Any:
    # Not staircase: every step has a rate of its own, so a stale or shifted
    # value cannot pass for the right one.
    return keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=3, decay_rate=0.7)


def _batch(tf: Any, step: Any, pipeline: Any, size: int) -> tuple[Any, Any]:
    """One input pipeline's (worker's) batch at one global step, from those two alone.

    A resumed job therefore sees exactly the batches the uninterrupted one saw.
    """
    seed = tf.stack([tf.cast(step, tf.int64), tf.cast(pipeline, tf.int64)])
    x = tf.random.stateless_normal((size, INPUTS), seed=seed)
    y = tf.reduce_sum(x * tf.linspace(-1.0, 1.0, INPUTS), axis=1, keepdims=True)
    return x, y


def _strategy(tf: Any, config: dict[str, Any]) -> Any:
    # Without a timeout, a collective waits forever for a peer that stalls.
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=config["collective_timeout_s"]
    )
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def _write_report(config: dict[str, Any], report: dict[str, Any]) -> None:
    """Replaces the report file in one step: readers see a whole report or none."""
    tmp = f"{config['report_path']}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f)
    os.replace(tmp, config["report_path"])


def _custom_loop(config: dict[str, Any], report: dict[str, Any]) -> None:
    import keras
    import tensorflow as tf

    from introspect_opt import IntrospectableSGD

    strategy = _strategy(tf, config)
    task_id = int(strategy.cluster_resolver.task_id)
    is_chief = task_id == 0  # no "chief" job in the cluster: worker 0 is the chief
    report["task_id"] = task_id
    report["replicas_in_sync"] = int(strategy.num_replicas_in_sync)
    steps = config["steps"]

    with strategy.scope():
        model, reference = _make_model(keras), _make_model(keras)
        optimizer = IntrospectableSGD(_schedule(keras), momentum=0.9)
        plain = keras.optimizers.SGD(_schedule(keras), momentum=0.9)
        optimizer.build(model.trainable_variables)
        plain.build(reference.trainable_variables)
        checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, reference=reference, plain=plain
        )

    # Every worker restores from the chief's directory.
    latest = tf.train.latest_checkpoint(config["checkpoint_dir"])
    if latest is not None:
        checkpoint.restore(latest).assert_consumed()
    start = int(optimizer.iterations.numpy())
    report["restored_from"] = latest
    report["start_step"] = start

    # Chief-writes: every worker saves (saving may run collectives), the chief
    # into the real directory, the others into a scratch directory that is
    # deleted right after each save.
    if is_chief:
        write_dir = config["checkpoint_dir"]
    else:
        write_dir = os.path.join(config["scratch_dir"], f"worker{task_id}")
        report["scratch_dir"] = write_dir
    manager = tf.train.CheckpointManager(checkpoint, write_dir, max_to_keep=None)

    def dataset_fn(context: Any) -> Any:
        size = context.get_per_replica_batch_size(GLOBAL_BATCH)
        pipeline = context.input_pipeline_id
        return tf.data.Dataset.range(start, steps).map(lambda s: _batch(tf, s, pipeline, size))

    dataset = strategy.distribute_datasets_from_function(dataset_fn)

    def train(x: Any, y: Any, net: Any, opt: Any) -> None:
        with tf.GradientTape() as tape:
            error = net(x, training=True) - y
            loss = tf.reduce_sum(error * error) / GLOBAL_BATCH
        grads = tape.gradient(loss, net.trainable_variables)
        opt.apply_gradients(zip(grads, net.trainable_variables, strict=True))

    @tf.function
    def train_step(x: Any, y: Any) -> tuple[Any, Any, Any]:
        def step_fn(x: Any, y: Any) -> tuple[Any, Any]:
            # What Keras passes to update_step on this step, computed in the
            # same graph the way `apply` computes it: schedule(iterations).
            planned = plain.learning_rate
            train(x, y, model, optimizer)
            train(x, y, reference, plain)
            return optimizer.current_learning_rate, planned  # replica context

        in_step, planned = strategy.run(step_fn, args=(x, y))
        return in_step, planned, optimizer.current_learning_rate  # cross-replica context

    rows = report["steps"] = []
    for step, (x, y) in zip(range(start, steps), dataset, strict=True):
        if step == config.get("die_at_step"):
            os.kill(os.getpid(), signal.SIGKILL)
        if step == config.get("freeze_at_step"):
            os.kill(os.getpid(), signal.SIGSTOP)
        in_step, planned, cross_replica = train_step(x, y)
        rows.append(
            {
                "step": step,
                "iterations": int(optimizer.iterations.numpy()),
                "in_step": [_bits(v) for v in strategy.experimental_local_results(in_step)],
                "planned": [_bits(v) for v in strategy.experimental_local_results(planned)],
                "cross_replica": _bits(cross_replica),
                "eager": _bits(optimizer.current_learning_rate),
                "time": time.time(),
            }
        )
        # TensorFlow may abort the process (SIGABRT) when a collective fails:
        # the steps done so far must be on disk by then.
        _write_report(config, report)
        if (step + 1) % config["checkpoint_every"] == 0:
            with strategy.scope():
                manager.save(checkpoint_number=step + 1)
            if not is_chief:
                shutil.rmtree(write_dir)

    with strategy.scope():
        model.compile(optimizer=optimizer, loss="mse")  # save_weights then saves it too
        os.makedirs(write_dir, exist_ok=True)
        model.save_weights(os.path.join(write_dir, "final.weights.h5"))
    if not is_chief:
        shutil.rmtree(write_dir)

    report["state"] = {
        "model": _array_bits(model.weights),
        "optimizer": _array_bits(optimizer.variables),
        "reference": _array_bits(reference.weights),
        "plain": _array_bits(plain.variables),
    }


def _fit(config: dict[str, Any], report: dict[str, Any]) -> None:
    import keras
    import tensorflow as tf

    # The full traceback tells the test which Keras function failed.
    keras.config.disable_traceback_filtering()
    strategy = _strategy(tf, config)
    report["task_id"] = int(strategy.cluster_resolver.task_id)
    with strategy.scope():
        model = _make_model(keras)
        model.compile(keras.optimizers.SGD(0.01), loss="mse")
    x, y = _batch(tf, 0, 0, 4 * GLOBAL_BATCH)
    model.fit(x.numpy(), y.numpy(), batch_size=GLOBAL_BATCH, epochs=1, verbose=0)
    report["iterations"] = int(model.optimizer.iterations.numpy())


def main() -> None:
    config = json.loads(sys.argv[1])
    # The last line of defence against orphans: even if the test process dies
    # without reaping this one, SIGALRM's default action ends it.
    signal.alarm(config["max_seconds"])
    report: dict[str, Any] = {"mode": config["mode"]}
    code = EXIT_OK
    try:
        import tensorflow as tf

        try:
            {"custom_loop": _custom_loop, "fit": _fit}[config["mode"]](config, report)
        except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as error:
            code = EXIT_PEER_FAILURE
            report["failed_at"] = time.time()
            report["error_type"] = type(error).__name__
            report["error"] = str(error)[-3000:]
    except BaseException as error:  # reported to the test, whatever it is
        code = EXIT_ERROR
        report["error_type"] = type(error).__name__
        report["error"] = traceback.format_exc()[-8000:]
    report["exit_code"] = code
    _write_report(config, report)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
