"""Callbacks: the applied rate in Keras's logs, and plateau reduction on schedules."""

from __future__ import annotations

import math
import numbers
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import keras
import numpy as np

from . import _factory, _history, _keras_private, _plateau
from ._diagnostics import read as read_diagnostics
from ._mechanism import IntrospectionMixin
from ._state import host_array

_INTERVALS = ('"epoch"', '"batch"', "a positive int N (every N steps)")


def _number(value: Any) -> float:
    return float(host_array(value))


def _hyperparameter_names(optimizer: Any) -> list[str]:
    """The scalar hyperparameters an optimizer has (besides its rate)."""
    names = []
    for key, value in optimizer.get_config().items():
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key != "learning_rate" and (numeric or value is None):
            names.append(key)
    return sorted(names)


def _hyperparameter(optimizer: Any, name: str) -> float:
    value = getattr(optimizer, name)
    if value is None:
        # Off: no weight decay is a decay of 0; other switched-off options
        # (clipping, EMA frequency) have no number.
        return 0.0 if name == "weight_decay" else math.nan
    return _number(value)


def _label(optimizer: Any) -> str:
    """The optimizer's name, without the counter Keras appends to default names.

    Keras names the second unnamed ``SGD`` of a process ``sgd_1``; log keys
    must not depend on how many optimizers a notebook created before.
    """
    name = str(optimizer.name)
    chosen_by_keras = optimizer.__dict__.get("_introspect_default_name")
    numbered = re.fullmatch(r"(.+)_\d+", name)
    if not numbered or chosen_by_keras is False:
        return name
    if chosen_by_keras or any(
        # (An instance made introspectable in place: no record of who chose
        # the name; a counter after a class's default name is Keras's.)
        _keras_private.unnumbered_default_name(cls) == numbered[1]
        for cls in type(optimizer).__mro__
    ):
        return numbered[1]
    return name


def _applied_rate(optimizer: Any, state: Any, iterations: int) -> float:
    """``float(optimizer.current_learning_rate)``, in two variable reads when cached.

    The property evaluates a comparison and a branch eagerly, several times
    the cost of reading the two variables it compares, and a logger reads it
    at every interval.
    """
    if state.has_variables and int(_number(state.update_count)) == iterations:
        return _number(state.applied_learning_rate)
    return _number(optimizer.current_learning_rate)


def _unwrap(optimizer: Any) -> tuple[Any, bool]:
    """(the optimizer that applies updates, whether a LossScaleOptimizer wraps it)."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.inner_optimizer, True
    return optimizer, False


def _retrace(model: Any) -> None:
    # New optimizer variables: a train function made (or traced) before they
    # existed would not update them. `fit` looks the function up every step.
    if getattr(model, "train_function", None) is not None:
        model.make_train_function(force=True)


class LearningRateLogger(keras.callbacks.Callback):
    """Writes the learning rate each update applied into Keras's logs.

    With this callback, ``History``, ``CSVLogger``, the progress bar and
    ``TensorBoard`` show the rate the updates actually used (not the next
    step's, which is what ``optimizer.learning_rate`` shows), with no code of
    yours. Each read is one small device read per logging interval: no per-step
    host round-trip unless you ask for ``interval="batch"`` without
    ``steps_per_execution``.

    Keys are ``"<label>/<quantity>"``: the label is the optimizer's ``name``
    (``"sgd"``, ``"adam"``, or the ``name=`` you gave it; the counter Keras
    appends to default names, as in ``sgd_1``, is dropped; the optimizer
    inside a ``LossScaleOptimizer``, so mixed precision does not change the
    keys), made unique with ``_2``, ``_3`` when several optimizers share a
    label, or the keys of ``optimizers``. The
    quantities are ``learning_rate``, each name in ``hyperparameters``, and,
    with ``diagnostics=True``, ``gradient_norm``, ``update_norm``,
    ``update_to_weight_ratio`` and, under loss scaling, ``skipped_steps``
    (steps since the previous read whose gradients were not finite, so no
    update was applied). Keras's own ``learning_rate`` key (the next step's
    rate, logged by ``LearningRateScheduler`` and ``ReduceLROnPlateau``) is
    left alone. Put this callback before ``CSVLogger`` and ``TensorBoard`` in
    the list so they see its keys.

    With ``every_step=True`` the optimizer keeps the rates of the last
    ``history_size`` updates on the device, and each read logs all of them to
    TensorBoard (``log_dir``) under their own update numbers: every step's
    rate, also with ``steps_per_execution=32``, at one read per interval.

    Args:
        interval: When to read: ``"epoch"`` (into the epoch logs), ``"batch"``
            (into the batch logs after every ``fit`` call of the train
            function, i.e. every ``steps_per_execution`` steps) or a positive
            int ``N`` (into the batch logs every ``N`` steps). Epoch logs always
            get the value at the end of the epoch.
        hyperparameters: Names of other scalar hyperparameters to log, e.g.
            ``("momentum", "weight_decay")``: any numeric entry of the
            optimizer's ``get_config()``. ``None`` (an option that is off) logs
            as ``nan``, except ``weight_decay``, which logs ``0.0``.
        diagnostics: Also record and log, per update, on the device: global
            gradient norm, update norm, update-to-weight ratio, and steps
            skipped by loss scaling. Costs a copy of the weights and a few
            reductions per update.
        every_step: Keep the last ``history_size`` rates on the device and log
            every one of them to TensorBoard (needs ``log_dir``).
        history_size: How many updates to keep with ``every_step=True``; by
            default the number of steps between two reads.
        log_dir: A directory for TensorBoard event files. The values go to
            ``<log_dir>/train`` (where ``keras.callbacks.TensorBoard`` writes
            too), one scalar per key at the global update number.
        optimizers: ``{label: optimizer}`` for models that train with several
            optimizers held outside ``model.optimizer`` (e.g. a GAN); by
            default ``model.optimizer``.

    Raises:
        ValueError: an argument is invalid (the message says what is valid).
        TypeError: at the start of ``fit``, the model's optimizer is not
            introspectable (the message says how to make it so).

    Examples:
        >>> import keras, numpy as np, introspect_opt
        >>> schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 1, 0.5)
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile(introspect_opt.IntrospectableSGD(schedule), loss="mse")
        >>> history = model.fit(
        ...     np.ones((8, 2)), np.ones((8, 1)), batch_size=4, epochs=2, verbose=0,
        ...     callbacks=[introspect_opt.LearningRateLogger()],
        ... )
        >>> [round(r, 6) for r in history.history["sgd/learning_rate"]]  # s(1), s(3)
        [0.05, 0.0125]
    """

    def __init__(
        self,
        interval: str | int = "epoch",
        *,
        hyperparameters: Iterable[str] | None = (),
        diagnostics: bool = False,
        every_step: bool = False,
        history_size: int | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        optimizers: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not (interval in ("epoch", "batch") or (_integer(interval) and int(interval) > 0)):
            raise ValueError(f"interval must be {', '.join(_INTERVALS)}; received {interval!r}.")
        if hyperparameters is None:
            hyperparameters = ()
        if isinstance(hyperparameters, str):
            hyperparameters = (hyperparameters,)
        if not isinstance(hyperparameters, Iterable):
            raise ValueError(
                "hyperparameters must be a tuple of names, e.g. ('momentum',); "
                f"received {hyperparameters!r}."
            )
        names = tuple(hyperparameters)
        bad = [n for n in names if not isinstance(n, str) or n == "learning_rate"]
        if bad:
            raise ValueError(
                "hyperparameters must be names of optimizer hyperparameters other "
                f"than learning_rate (always logged), e.g. ('momentum',); received "
                f"{bad!r}."
            )
        for argument, value in (("diagnostics", diagnostics), ("every_step", every_step)):
            if not isinstance(value, bool):
                raise ValueError(f"{argument} must be True or False; received {value!r}.")
        if history_size is not None:
            if not every_step:
                raise ValueError(
                    f"history_size={history_size!r} is only used with every_step=True; "
                    "pass every_step=True, or drop history_size."
                )
            _history._check_size(history_size, "history_size")
        if log_dir is not None:
            _require_tensorboard()
        if every_step and log_dir is None:
            raise ValueError(
                "every_step=True logs each step's rate to TensorBoard event files; "
                "pass log_dir='...' (or read them with introspect_opt.rate_history)."
            )
        if optimizers is not None:
            if not isinstance(optimizers, Mapping) or not optimizers:
                raise ValueError(
                    "optimizers must be a non-empty dict {label: optimizer}; received "
                    f"{optimizers!r}."
                )
            if any(not isinstance(k, str) or not k for k in optimizers):
                raise ValueError(
                    f"optimizers labels must be non-empty strings; received {list(optimizers)!r}."
                )
            for label, given in optimizers.items():
                if not isinstance(_unwrap(given)[0], IntrospectionMixin):
                    raise TypeError(
                        f"optimizers[{label!r}] must be an introspectable optimizer (or a "
                        f"LossScaleOptimizer around one); received {type(given).__name__} "
                        f"{getattr(given, 'name', given)!r}. Create it as "
                        "introspect_opt.Introspectable<Name>(...), or wrap it with "
                        "introspect_opt.introspect(optimizer) before training."
                    )
        self.interval = interval if isinstance(interval, str) else int(interval)
        self.hyperparameters = names
        self.diagnostics = diagnostics
        self.every_step = every_step
        self.history_size = history_size
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self._given = dict(optimizers) if optimizers is not None else None
        self._tracked: list[tuple[str, Any, bool]] = []
        self._writer: Any = None
        self._last_logged: dict[str, int] = {}
        self._last_counters: dict[str, int] = {}
        self._steps_run = 0
        self._steps_at_last_read = 0
        self._epoch_steps = 0
        self._warned_gap = False
        self._epoch_base: tuple[int, dict[str, int]] | None = None
        self._last_summary_step = -1
        self._block_writers: dict[str, Any] = {}
        if interval == "epoch" and not diagnostics:
            # No batch-level work: keep Keras's default (no-op) hook, so that
            # Keras may still dispatch batch callbacks asynchronously.
            self.on_train_batch_end = super().on_train_batch_end  # type: ignore[method-assign]

    # --- set-up --------------------------------------------------------------

    def _resolve(self) -> list[tuple[str, Any, bool]]:
        if self._given is None:
            try:
                optimizer = _factory.resolve_optimizer(self.model, "LearningRateLogger")
            except TypeError as error:
                raise TypeError(
                    f"LearningRateLogger cannot log this model's rate: {error}"
                ) from None
            found = [(_label(optimizer), optimizer, _unwrap(self.model.optimizer)[1])]
        else:
            found = []
            for label, given in self._given.items():
                optimizer, wrapped = _unwrap(given)
                if not isinstance(optimizer, IntrospectionMixin):
                    raise TypeError(
                        f"LearningRateLogger: optimizers[{label!r}] is "
                        f"{type(optimizer).__name__} '{getattr(optimizer, 'name', '?')}', "
                        "not introspectable: wrap it with introspect_opt.introspect() "
                        "before training."
                    )
                found.append((label, optimizer, wrapped))
        labels: dict[str, int] = {}
        tracked = []
        for label, optimizer, wrapped in found:
            labels[label] = labels.get(label, 0) + 1
            unique = label if labels[label] == 1 else f"{label}_{labels[label]}"
            tracked.append((unique, optimizer, wrapped))
        return tracked

    def _steps_between_reads(self) -> int:
        """The most steps that can run between two reads."""
        per_execution = int(getattr(self.model, "steps_per_execution", 1) or 1)
        if isinstance(self.interval, int):
            # Reads happen at the end of a call of the train function, the
            # first one that passes a multiple of N: up to N + spe - 1 apart.
            n = self.interval
            return n if n % per_execution == 0 else n + per_execution - 1
        if self.interval == "batch":
            return per_execution
        steps = (self.params or {}).get("steps")
        if not steps:
            raise ValueError(
                "LearningRateLogger(every_step=True, interval='epoch') cannot tell "
                "how many steps an epoch has (the dataset has no known length); "
                "pass history_size=<steps per epoch>."
            )
        # Keras runs whole blocks of steps_per_execution steps, also past the
        # epoch's declared step count.
        return -(-int(steps) // per_execution) * per_execution

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._tracked = self._resolve()
        created = False
        for label, optimizer, _ in self._tracked:
            valid = _hyperparameter_names(optimizer)
            missing = [n for n in self.hyperparameters if n not in valid]
            if missing:
                raise ValueError(
                    f"LearningRateLogger: {type(optimizer).__name__} '{label}' has no "
                    f"scalar hyperparameter {missing!r}; valid names are {valid}."
                )
            state = optimizer._ensure_introspection_state()
            if self.every_step:
                size = self.history_size or max(self._steps_between_reads(), 1)
                kept = state.history_size or state.requested.history
                if kept and self.history_size is None and kept >= size:
                    size = kept  # an existing, large enough buffer
                if kept and kept != size:
                    # A later fit reads less often, or a file brought a
                    # buffer of another size: resize it, newest entries kept.
                    _history.resize(optimizer, size)
                    created = True
                elif not kept:
                    _history.keep_rate_history(optimizer, size)
                    created = True
            if self.diagnostics and state.gradient_norm is None:
                if state.has_variables:
                    state.create_feature(optimizer, "diagnostics")
                    created = True
                else:
                    state.requested.diagnostics = 1
        if created:
            _retrace(self.model)
        if self.log_dir is not None and self._writer is None:
            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "train"))
        for label, optimizer, _ in self._tracked:
            self._last_logged[label] = int(_number(optimizer.iterations))
            self._last_counters[label] = int(_number(_keras_private.raw_step_counter(optimizer)))
        self._steps_at_last_read = self._steps_run

    # --- reads ---------------------------------------------------------------

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_steps = 0
        if self.diagnostics:
            self._epoch_base = (self._steps_run, self._counters())

    def _counters(self) -> dict[str, int]:
        return {
            label: int(_number(_keras_private.raw_step_counter(optimizer)))
            for label, optimizer, _ in self._tracked
        }

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        before = self._steps_run
        self._steps_run += batch + 1 - self._epoch_steps
        self._epoch_steps = batch + 1
        if self.interval == "batch" or (
            isinstance(self.interval, int)
            and self._steps_run // self.interval > before // self.interval
        ):
            self._read(logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._read(logs, epoch_end=True)
        if self._writer is not None:
            self._writer.flush()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._writer is not None:
            self._writer.flush()

    def _read(self, logs: dict[str, Any] | None, epoch_end: bool = False) -> None:
        if not self._tracked:
            return
        if hasattr(self.model, "jax_state_sync"):
            self.model.jax_state_sync()  # JAX keeps fit's state off the variables
        values: dict[str, float] = {}
        # Skipped steps: batch logs count since the previous read, epoch logs
        # over the whole epoch.
        if epoch_end and self._epoch_base is not None:
            base_steps, base_counters = self._epoch_base
        else:
            base_steps, base_counters = self._steps_at_last_read, dict(self._last_counters)
        steps_since = self._steps_run - base_steps
        self._steps_at_last_read = self._steps_run
        step = 0
        for label, optimizer, wrapped in self._tracked:
            state = optimizer._ensure_introspection_state()
            step = int(_number(optimizer.iterations))
            values[f"{label}/learning_rate"] = _applied_rate(optimizer, state, step)
            for name in self.hyperparameters:
                values[f"{label}/{name}"] = _hyperparameter(optimizer, name)
            if self.diagnostics:
                fresh = state.has_variables and int(_number(state.update_count)) == step
                for key, value in read_diagnostics(state, fresh).items():
                    values[f"{label}/{key}"] = value
                counter = int(_number(_keras_private.raw_step_counter(optimizer)))
                if wrapped:
                    # Loss scaling skips a step by not calling the optimizer at
                    # all: its raw counter (micro-steps included) stands still.
                    passed = counter - base_counters[label]
                    values[f"{label}/skipped_steps"] = float(max(steps_since - passed, 0))
                self._last_counters[label] = counter
            if self.every_step:
                self._log_history(label, optimizer, step)
        if logs is not None:
            logs.update(values)
        if self._writer is not None and step != self._last_summary_step:
            # (An epoch's end often reads at the step its last batch read.)
            self._last_summary_step = step
            import tensorflow as tf

            with self._writer.as_default():
                for key, value in values.items():
                    if not (self.every_step and key.endswith("/learning_rate")):
                        tf.summary.scalar(key, value, step=step)

    def _log_history(self, label: str, optimizer: Any, step: int) -> None:
        import tensorflow as tf

        updates, rates = _history.recorded_rates(optimizer)
        last = self._last_logged.get(label, 0)
        new = updates > last
        updates, rates = updates[new], rates[new]
        lost = (int(updates[0]) if updates.size else step + 1) - last - 1
        lost = min(lost, step - last)
        if lost > 0 and not self._warned_gap:
            self._warned_gap = True
            warnings.warn(
                f"LearningRateLogger: the rates of {lost} updates of '{label}' had "
                "already left the on-device history when it was read (it keeps "
                f"{optimizer._ensure_introspection_state().history_size}); pass a "
                "larger history_size (at least the number of steps between reads).",
                stacklevel=2,
            )
        if updates.size:
            self._block_writer(f"{label}/learning_rate")(
                tf.constant(updates, tf.int64), tf.constant(rates, tf.float32)
            )
            self._last_logged[label] = int(updates[-1])

    def _block_writer(self, tag: str) -> Any:
        """One compiled call that writes a whole block of (step, value) scalars.

        An eager ``tf.summary.scalar`` costs about half a millisecond of
        Python and dispatch each; once per step that would be most of a small
        model's step time.
        """
        writer = self._block_writers.get(tag)
        if writer is None:
            import tensorflow as tf

            summary_writer = self._writer

            def write(steps: Any, values: Any) -> None:
                with summary_writer.as_default():
                    for i in tf.range(tf.shape(steps)[0]):
                        # The loop's name scope would prefix the tag ("while/").
                        with tf.compat.v1.name_scope(None):
                            tf.summary.scalar(tag, values[i], step=steps[i])

            writer = tf.function(
                write,
                input_signature=[
                    tf.TensorSpec([None], tf.int64),
                    tf.TensorSpec([None], tf.float32),
                ],
            )
            self._block_writers[tag] = writer
        return writer


class ScaleLearningRateOnPlateau(keras.callbacks.Callback):
    """Scales the learning rate, schedule included, down when a metric stalls.

    Keras's ``ReduceLROnPlateau`` raises ``TypeError`` when the rate is a
    schedule, because it assigns a new float rate. This callback has the same
    arguments and plateau logic, but multiplies whatever the rate is (schedule,
    float or callable) by a multiplier kept in the optimizer's state: the
    schedule keeps its shape, scaled by ``factor`` at each plateau. The
    multiplier is saved and restored with the optimizer (every checkpoint
    format), is part of ``current_learning_rate`` and of
    ``optimizer.learning_rate``, and is logged as
    ``"<label>/learning_rate_multiplier"`` (the label as in
    ``LearningRateLogger``). Put it before ``ModelCheckpoint`` and
    ``BackupAndRestore`` in the callback list, so that what they save at the
    end of an epoch holds the multiplier chosen at the end of that epoch.

    Args:
        monitor: The metric to watch, e.g. ``"val_loss"``.
        factor: The multiplier is multiplied by this on a plateau; in (0, 1).
        patience: Epochs without improvement before scaling down.
        verbose: 1 to print a message when scaling down.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (from the metric's name).
        min_delta: The smallest change that counts as an improvement.
        cooldown: Epochs to wait after scaling down before counting again.
        min_multiplier: A lower bound on the multiplier, in [0, 1).

    Raises:
        ValueError: an argument is invalid (the message says what is valid).
        TypeError: at the start of ``fit``, the model's optimizer is not
            introspectable (the message says how to make it so).

    Examples:
        >>> import keras, numpy as np, introspect_opt
        >>> schedule = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=100)
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile(introspect_opt.IntrospectableSGD(schedule), loss="mse")
        >>> plateau = introspect_opt.ScaleLearningRateOnPlateau(
        ...     "loss", factor=0.5, patience=0, min_delta=1e9  # every epoch is a plateau
        ... )
        >>> history = model.fit(
        ...     np.ones((4, 2)), np.ones((4, 1)), epochs=3, verbose=0, callbacks=[plateau]
        ... )
        >>> history.history["sgd/learning_rate_multiplier"]
        [1.0, 0.5, 0.25]
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        verbose: int = 0,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_multiplier: float = 0.0,
    ) -> None:
        super().__init__()
        checks = (
            ("monitor", monitor, isinstance(monitor, str) and bool(monitor), "a metric name"),
            ("factor", factor, _real(factor) and 0 < factor < 1, "a number in (0, 1)"),
            ("patience", patience, _count(patience), "an int >= 0"),
            ("verbose", verbose, _count(verbose), "0 or 1"),
            ("mode", mode, mode in ("auto", "min", "max"), '"auto", "min" or "max"'),
            ("min_delta", min_delta, _real(min_delta) and min_delta >= 0, "a number >= 0"),
            ("cooldown", cooldown, _count(cooldown), "an int >= 0"),
            (
                "min_multiplier",
                min_multiplier,
                _real(min_multiplier) and 0 <= min_multiplier < 1,
                "a number in [0, 1)",
            ),
        )
        for argument, value, ok, valid in checks:
            if not ok:
                raise ValueError(f"{argument} must be {valid}; received {value!r}.")
        self.monitor = monitor
        self.factor = float(factor)
        self.patience = patience
        self.verbose = verbose
        self.min_delta = float(min_delta)
        self.cooldown = cooldown
        self.min_multiplier = float(min_multiplier)
        if mode == "auto":
            mode = "max" if "acc" in monitor or monitor.endswith("auc") else "min"
        self.mode = mode
        self._optimizer: Any = None
        self._reset()

    def _reset(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait = 0
        self.cooldown_counter = 0

    def _improved(self, current: float) -> bool:
        if self.mode == "min":
            return current < self.best - self.min_delta
        return current > self.best + self.min_delta

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        try:
            self._optimizer = _factory.resolve_optimizer(self.model, "ScaleLearningRateOnPlateau")
        except TypeError as error:
            raise TypeError(
                f"ScaleLearningRateOnPlateau cannot scale this model's rate: {error}"
            ) from None
        if _plateau.enable_multiplier(self._optimizer) and self._optimizer.built:
            _retrace(self.model)
        self._reset()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs if logs is not None else {}
        optimizer = self._optimizer
        multiplier = _plateau.schedule_multiplier(optimizer)
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(
                f"ScaleLearningRateOnPlateau: the metric '{self.monitor}' is not in "
                f"the logs (available: {sorted(logs)}); the rate is left as it is.",
                stacklevel=2,
            )
        else:
            current = float(current)
            if self.cooldown_counter > 0:
                self.cooldown_counter -= 1
                self.wait = 0
            if self._improved(current):
                self.best = current
                self.wait = 0
            elif self.cooldown_counter <= 0:
                self.wait += 1
                # As Keras's ReduceLROnPlateau: `>=`, and the floor compared
                # in float32, the variable's dtype.
                floor = float(np.float32(self.min_multiplier))
                if self.wait >= self.patience and multiplier > floor:
                    multiplier = max(multiplier * self.factor, floor)
                    _plateau.set_multiplier(optimizer, multiplier)
                    multiplier = _plateau.schedule_multiplier(optimizer)
                    if self.verbose:
                        print(
                            f"\nEpoch {epoch + 1}: ScaleLearningRateOnPlateau scaled the "
                            f"learning rate of '{optimizer.name}' by {self.factor} "
                            f"(multiplier now {multiplier:.6g})."
                        )
                    self.cooldown_counter = self.cooldown
                    self.wait = 0
        logs[f"{_label(optimizer)}/learning_rate_multiplier"] = multiplier


def _require_tensorboard() -> None:
    try:
        import tensorboard  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        raise ImportError(
            "LearningRateLogger(log_dir=...) writes TensorBoard event files, which "
            'needs the tensorboard package: pip install "introspect-opt[tensorboard]" '
            "(or pip install tensorboard)."
        ) from None


def _real(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(float(value))
    )


def _count(value: Any) -> bool:
    return _integer(value) and value >= 0


def _integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
