"""One task of a tf_keras ParameterServerStrategy `fit` job, run by test_tfk_multi_process.py.

Usage: ``python tfk_parameter_server_fit.py '<json config>'``, with ``TF_CONFIG``
and ``TF_USE_LEGACY_KERAS=1`` set by the test. ``ps`` and ``worker`` tasks run
a TensorFlow server until the test kills them; the ``chief`` is the
coordinator: it runs ``model.fit`` with ``IntrospectableSGD`` through
``ParameterServerStrategy`` (workers take steps asynchronously) and reports,
at the end of every epoch, ``iterations`` and the cached pair (rate, update
count) as read on the coordinator. The report (JSON) goes to ``report_path``;
the chief leaves through ``os._exit`` with 0, or 2 and the traceback.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from typing import Any

EXIT_OK, EXIT_ERROR = 0, 2


def _bits(value: Any) -> int:
    import numpy as np

    return int(np.asarray(value, dtype=np.float32).reshape(()).view(np.int32))


def _write_report(config: dict[str, Any], report: dict[str, Any]) -> None:
    tmp = f"{config['report_path']}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f)
    os.replace(tmp, config["report_path"])


def _coordinator(config: dict[str, Any], report: dict[str, Any], resolver: Any) -> None:
    import numpy as np
    import tensorflow as tf
    import tf_keras

    from introspect_opt.tf_keras import IntrospectableSGD

    strategy = tf.distribute.ParameterServerStrategy(resolver)
    schedule = tf_keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.95)
    with strategy.scope():
        tf_keras.utils.set_random_seed(0)
        model = tf_keras.Sequential(
            [
                tf_keras.layers.Dense(8, activation="relu", input_shape=(4,)),
                tf_keras.layers.Dense(1),
            ]
        )
        model.compile(IntrospectableSGD(schedule, momentum=0.9), loss="mse")

    def dataset_fn(context: Any) -> Any:
        rng = np.random.default_rng(1)
        x = rng.normal(size=(64, 4)).astype("float32")
        y = x.sum(axis=1, keepdims=True)
        return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(8)

    rows = report["epochs"] = []

    class Record(tf_keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            optimizer = self.model.optimizer
            state = optimizer._introspection_state.values()
            rows.append(
                {
                    "iterations": int(optimizer.iterations.numpy()),
                    "applied": _bits(optimizer.current_learning_rate),
                    "cached_rate": _bits(state["applied_learning_rate"]),
                    "cached_update": int(state["update_count"]),
                }
            )
            _write_report(config, report)

    model.fit(
        tf_keras.utils.experimental.DatasetCreator(dataset_fn),
        epochs=config["epochs"],
        steps_per_epoch=config["steps_per_epoch"],
        verbose=0,
        callbacks=[Record()],
    )
    report["schedule"] = [_bits(schedule(step)) for step in range(200)]


def main() -> None:
    config = json.loads(sys.argv[1])
    signal.alarm(config["max_seconds"])  # no orphans, whatever happens to the test
    report: dict[str, Any] = {}
    code = EXIT_OK
    try:
        import tensorflow as tf

        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        if resolver.task_type in ("ps", "worker"):
            server = tf.distribute.Server(
                resolver.cluster_spec(),
                job_name=resolver.task_type,
                task_index=resolver.task_id,
                protocol="grpc",
                start=True,
            )
            server.join()  # until the test kills this process
        _coordinator(config, report, resolver)
    except BaseException:  # reported to the test, whatever it is
        code = EXIT_ERROR
        report["error"] = traceback.format_exc()[-8000:]
    report["exit_code"] = code
    _write_report(config, report)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
