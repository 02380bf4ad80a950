"""One worker of a tf_keras MultiWorkerMirroredStrategy `fit` job, run by test_tfk_multi_process.py.

Usage: ``python tfk_multi_worker_fit.py '<json config>'``, with ``TF_CONFIG``
and ``TF_USE_LEGACY_KERAS=1`` set by the test. The worker trains a small model
with ``IntrospectableSGD`` (schedule, momentum) through ``model.fit`` over a
dataset sharded between the workers, with ``BackupAndRestore`` (epoch backups)
in ``backup_dir``. A callback records, after every update, ``iterations`` and
the applied rate read eagerly. With ``die_at_update`` set, the worker sends
itself SIGKILL right after that update. With ``with_plain`` set, it then fits
the same model with plain ``SGD`` and reports both final weights.

The report (JSON, written atomically after every update and at the end) goes
to ``report_path``; the process leaves through ``os._exit`` with 0, or 2 and
the traceback in the report.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from typing import Any

EXIT_OK, EXIT_ERROR = 0, 2
GLOBAL_BATCH = 8
SAMPLES = 32  # 4 updates per epoch


def _bits(value: Any) -> int:
    import numpy as np

    return int(np.asarray(value, dtype=np.float32).reshape(()).view(np.int32))


def _array_bits(values: Any) -> list[list[int]]:
    import numpy as np

    return [np.asarray(v, dtype=np.float32).ravel().view(np.int32).tolist() for v in values]


def _write_report(config: dict[str, Any], report: dict[str, Any]) -> None:
    tmp = f"{config['report_path']}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f)
    os.replace(tmp, config["report_path"])


def _run(config: dict[str, Any], report: dict[str, Any]) -> None:
    import numpy as np
    import tensorflow as tf
    import tf_keras

    from introspect_opt.tf_keras import IntrospectableSGD, current_learning_rate

    assert tf.keras.optimizers.SGD is tf_keras.optimizers.SGD  # TF_USE_LEGACY_KERAS=1
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=config["collective_timeout_s"]
    )
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    report["task_id"] = int(strategy.cluster_resolver.task_id)
    report["replicas_in_sync"] = int(strategy.num_replicas_in_sync)
    schedule = tf_keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.9)

    rng = np.random.default_rng(1)
    x = rng.normal(size=(SAMPLES, 4)).astype("float32")
    y = x @ np.linspace(-1.0, 1.0, 4, dtype="float32")[:, None]
    data_options = tf.data.Options()
    data_options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    dataset = dataset.with_options(data_options)

    def fit(optimizer_cls: Any, callbacks: list[Any]) -> Any:
        with strategy.scope():
            tf_keras.utils.set_random_seed(0)
            model = tf_keras.Sequential(
                [
                    tf_keras.layers.Dense(8, activation="relu", input_shape=(4,)),
                    tf_keras.layers.Dense(1),
                ]
            )
            model.compile(optimizer_cls(schedule, momentum=0.9), loss="mse")
        model.fit(dataset, epochs=config["epochs"], verbose=0, callbacks=callbacks)
        return model

    rows = report["updates"] = []

    class Record(tf_keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            updates = int(self.model.optimizer.iterations.numpy())
            rows.append({"update": updates, "applied": _bits(current_learning_rate(self.model))})
            _write_report(config, report)
            if updates == config.get("die_at_update"):
                os.kill(os.getpid(), signal.SIGKILL)

    backup = tf_keras.callbacks.BackupAndRestore(config["backup_dir"])
    model = fit(IntrospectableSGD, [backup, Record()])
    report["weights"] = _array_bits(model.get_weights())
    report["final_applied"] = _bits(model.optimizer.current_learning_rate)
    if config.get("with_plain"):
        plain = fit(tf_keras.optimizers.SGD, [])
        report["plain_weights"] = _array_bits(plain.get_weights())


def main() -> None:
    config = json.loads(sys.argv[1])
    # The last line of defence against orphans: SIGALRM's default action ends it.
    signal.alarm(config["max_seconds"])
    report: dict[str, Any] = {}
    code = EXIT_OK
    try:
        _run(config, report)
    except BaseException:  # reported to the test, whatever it is
        code = EXIT_ERROR
        report["error"] = traceback.format_exc()[-8000:]
    report["exit_code"] = code
    _write_report(config, report)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # gRPC server threads must not keep the process alive


if __name__ == "__main__":
    main()
