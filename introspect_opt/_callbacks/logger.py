"""``LearningRateLogger``: the applied rate, in Keras's logs, at an interval."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Mapping
from typing import Any

import keras
import numpy as np

from introspect_opt._features import diagnostics as _diagnostics
from introspect_opt._keras3 import compat as _keras_private
from introspect_opt._keras3.mixin import IntrospectableOptimizer
from introspect_opt._keras3.resolve import describe_optimizer, resolve_optimizer, unwrap
from introspect_opt._keras3.state import AppliedRateState, host_float

INTERVALS = ('"epoch"', '"batch"', "a positive int N (every N steps)")


def label(optimizer: Any) -> str:
    """The optimizer's name, without the counter Keras appends to default names.

    Keras names the second unnamed ``SGD`` of a process ``sgd_1``; log keys
    must not depend on how many optimizers a notebook created before.
    """
    # (tf_keras's legacy optimizers keep it in their config only.)
    name = str(getattr(optimizer, "name", None) or optimizer.get_config()["name"])
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


def retrace(model: Any) -> None:
    """Makes ``fit`` trace its train function again (new optimizer variables).

    A train function made, or traced, before the variables existed would not
    update them. ``fit`` looks the function up on every step.
    """
    if getattr(model, "train_function", None) is not None:
        model.make_train_function(force=True)


def check_interval(interval: Any) -> str | int:
    if interval in ("epoch", "batch"):
        return str(interval)
    if is_integer(interval) and int(interval) > 0:
        return int(interval)
    raise ValueError(f"interval must be {', '.join(INTERVALS)}; received {interval!r}.")


def check_optimizers(
    optimizers: Any,
    unwrap_optimizer: Any = unwrap,
    introspectable: type = IntrospectableOptimizer,
    module: str = "introspect_opt",
) -> dict[str, Any] | None:
    """Validates ``optimizers={label: optimizer}`` (None: the model's).

    ``unwrap_optimizer``, ``introspectable`` and ``module`` are the Keras world's
    (tf_keras passes its own).
    """
    if optimizers is None:
        return None
    if not isinstance(optimizers, Mapping) or not optimizers:
        raise ValueError(
            f"optimizers must be a non-empty dict {{label: optimizer}}; received {optimizers!r}."
        )
    if any(not isinstance(k, str) or not k for k in optimizers):
        raise ValueError(
            f"optimizers labels must be non-empty strings; received {list(optimizers)!r}."
        )
    for key, given in optimizers.items():
        if not isinstance(unwrap_optimizer(given)[0], introspectable):
            raise TypeError(
                f"optimizers[{key!r}] must be an introspectable optimizer (or a "
                f"LossScaleOptimizer around one); received {type(given).__name__} "
                f"{getattr(given, 'name', given)!r}. Create it as "
                f"{module}.Introspectable<Name>(...), or make it introspectable "
                f"with {module}.introspect(optimizer) before training."
            )
    return dict(optimizers)


def tracked_optimizers(
    callback: str,
    model: Any,
    given: dict[str, Any] | None,
    resolve: Any = resolve_optimizer,
    unwrap_optimizer: Any = unwrap,
) -> list[tuple[str, Any, bool]]:
    """[(label, introspectable optimizer, wrapped in loss scaling)].

    ``resolve`` and ``unwrap_optimizer`` are the Keras world's (tf_keras passes
    its own).
    """
    if given is not None:
        return [(key, *unwrap_optimizer(value)) for key, value in given.items()]
    try:
        optimizer = resolve(model, callback)
    except TypeError as error:
        raise TypeError(f"{callback} cannot read this model's rate: {error}") from None
    return [(label(optimizer), optimizer, unwrap_optimizer(model.optimizer)[1])]


class StepCounter:
    """Counts ``fit``'s steps from the batch indices Keras reports, host-side only.

    With ``steps_per_execution=k`` Keras calls the batch hooks once per block,
    with the index of the block's last batch.
    """

    def __init__(self) -> None:
        self.total = 0
        self.in_epoch = 0

    def start_epoch(self) -> None:
        self.in_epoch = 0

    def batch_end(self, batch: int) -> int:
        """Counts up to ``batch``; returns the steps run before this call."""
        before = self.total
        self.total += batch + 1 - self.in_epoch
        self.in_epoch = batch + 1
        return before


class Keras3:
    """How the logger finds and reads Keras 3 optimizers (tf_keras has its own)."""

    @staticmethod
    def check_optimizers(optimizers: Any) -> dict[str, Any] | None:
        return check_optimizers(optimizers)

    @staticmethod
    def track(callback: str, model: Any, given: dict[str, Any] | None) -> list[Any]:
        return tracked_optimizers(callback, model, given)

    @staticmethod
    def raw_steps(optimizer: Any) -> int:
        return int(host_float(_keras_private.raw_step_counter(optimizer)))

    @staticmethod
    def enable_diagnostics(optimizer: Any) -> bool:
        state = optimizer._ensure_introspection_state()
        return bool(state.enable(optimizer, _diagnostics.DIAGNOSTICS.name))

    @staticmethod
    def diagnostics(optimizer: Any) -> dict[str, float]:
        return _diagnostics.read(optimizer)


class LoggerCore:
    """What ``LearningRateLogger`` does, for any Keras world's callback to delegate to.

    Keeps the arguments, the optimizers it logs, and a host-side step count;
    puts ``<label>/<quantity>`` values into the logs it is handed.
    """

    def __init__(
        self,
        world: Any,
        interval: Any,
        hyperparameters: Any,
        diagnostics: Any,
        optimizers: Any,
        removed: dict[str, Any],
    ) -> None:
        moved = sorted(set(removed) & {"every_step", "history_size", "log_dir"})
        if moved:
            raise TypeError(
                f"LearningRateLogger no longer takes {', '.join(moved)} (since 0.2): "
                "every step's rate goes to TensorBoard with its own callback, "
                "introspect_opt.RateHistoryToTensorBoard(log_dir, interval=...)."
            )
        if removed:
            raise TypeError(
                f"LearningRateLogger got unexpected keyword arguments {sorted(removed)}."
            )
        self.world = world
        self.interval = check_interval(interval)
        if isinstance(hyperparameters, str):
            hyperparameters = (hyperparameters,)
        if hyperparameters is None:
            hyperparameters = ()
        if not isinstance(hyperparameters, Iterable):
            raise ValueError(
                "hyperparameters must be a tuple of names, e.g. ('momentum',); "
                f"received {hyperparameters!r}."
            )
        self.hyperparameters = tuple(hyperparameters)
        bad = [n for n in self.hyperparameters if not isinstance(n, str) or n == "learning_rate"]
        if bad:
            raise ValueError(
                "hyperparameters must be names of optimizer hyperparameters other "
                f"than learning_rate (always logged), e.g. ('momentum',); received "
                f"{bad!r}."
            )
        if not isinstance(diagnostics, bool):
            raise ValueError(f"diagnostics must be True or False; received {diagnostics!r}.")
        self.diagnostics = diagnostics
        self.given = world.check_optimizers(optimizers)
        self.tracked: list[tuple[str, Any, bool]] = []
        self.steps = StepCounter()
        # Per label: (steps run, raw step counter) at the previous read and at
        # the start of the epoch, to count the steps loss scaling skipped.
        self.at_read: dict[str, tuple[int, int]] = {}
        self.at_epoch: dict[str, tuple[int, int]] = {}

    @property
    def reads_batches(self) -> bool:
        return self.interval != "epoch" or self.diagnostics

    def train_begin(self, model: Any) -> None:
        self.tracked = self.world.track("LearningRateLogger", model, self.given)
        created = False
        for name, optimizer, _ in self.tracked:
            valid = _hyperparameter_names(optimizer)
            missing = [n for n in self.hyperparameters if n not in valid]
            if missing:
                raise ValueError(
                    f"LearningRateLogger: {describe_optimizer(optimizer)} ({name!r}) has "
                    f"no scalar hyperparameter {missing!r}; valid names are {valid}."
                )
            if self.diagnostics:
                created |= self.world.enable_diagnostics(optimizer)
        if created:
            retrace(model)
        self.at_read = self._counters()

    def _counters(self) -> dict[str, tuple[int, int]]:
        return {
            name: (self.steps.total, self.world.raw_steps(opt)) for name, opt, _ in self.tracked
        }

    def epoch_begin(self) -> None:
        self.steps.start_epoch()
        if self.diagnostics:
            self.at_epoch = self._counters()

    def batch_end(self, model: Any, batch: int, logs: dict[str, Any] | None) -> None:
        before = self.steps.batch_end(batch)
        interval = self.interval
        if interval == "batch" or (
            isinstance(interval, int) and self.steps.total // interval > before // interval
        ):
            self.read(model, logs, self.at_read)

    def epoch_end(self, model: Any, logs: dict[str, Any] | None) -> None:
        self.read(model, logs, self.at_epoch)

    def read(
        self, model: Any, logs: dict[str, Any] | None, since: dict[str, tuple[int, int]]
    ) -> None:
        if not self.tracked or logs is None:
            return
        if hasattr(model, "jax_state_sync"):
            model.jax_state_sync()  # JAX keeps fit's state off the variables
        for name, optimizer, wrapped in self.tracked:
            logs[f"{name}/learning_rate"] = _applied_rate(optimizer)
            for hyperparameter in self.hyperparameters:
                logs[f"{name}/{hyperparameter}"] = _hyperparameter(optimizer, hyperparameter)
            if self.diagnostics:
                for key, value in self.world.diagnostics(optimizer).items():
                    logs[f"{name}/{key}"] = value
                if wrapped:
                    logs[f"{name}/skipped_steps"] = float(self._skipped(name, optimizer, since))
        self.at_read = self._counters()

    def _skipped(self, name: str, optimizer: Any, since: dict[str, tuple[int, int]]) -> int:
        """Steps since ``since`` that reached no update (loss scaling skipped them).

        A skipped step never reaches the optimizer: its raw step counter
        (micro-steps included) stands still while ``fit`` counts the step.
        """
        steps, counter = since.get(name, (self.steps.total, 0))
        now: int = self.world.raw_steps(optimizer)
        return max((self.steps.total - steps) - (now - counter), 0)


class LearningRateLogger(keras.callbacks.Callback):
    """Writes the learning rate each update applied into Keras's logs.

    With this callback, ``History``, ``CSVLogger``, the progress bar and
    Keras's ``TensorBoard`` show the rate the updates actually used (not the
    next step's, which ``optimizer.learning_rate`` shows), with no code of
    yours. Each read is a few scalar device reads per interval.

    Keys are ``"<label>/<quantity>"``. The label is the optimizer's ``name``
    without the counter Keras appends to default names (``sgd``, not
    ``sgd_1``; the inner optimizer's under a ``LossScaleOptimizer``), or the
    keys of ``optimizers``; the quantities are
    ``learning_rate``, each name in ``hyperparameters``, and with
    ``diagnostics=True`` ``gradient_norm``, ``update_norm``,
    ``update_to_weight_ratio`` and, under loss scaling, ``skipped_steps``.
    Put it before ``CSVLogger``, ``TensorBoard`` and other loggers in the
    callback list, so they see its keys. Keras's own ``learning_rate`` key
    (the next step's rate, written by ``LearningRateScheduler`` and
    ``ReduceLROnPlateau``) is left alone. To send every step's rate to
    TensorBoard, see ``RateHistoryToTensorBoard``.

    Args:
        interval: When to read: ``"epoch"`` (into the epoch logs), ``"batch"``
            (into the batch logs after every call of the train function, i.e.
            every ``steps_per_execution`` steps) or a positive int ``N`` (into
            the batch logs every ``N`` steps). Epoch logs always get the value
            at the end of the epoch.
        hyperparameters: Names of other scalar hyperparameters to log, e.g.
            ``("momentum", "weight_decay")``: any numeric entry of the
            optimizer's ``get_config()``. An option that is off (``None``)
            logs as ``nan``, except ``weight_decay``, which logs ``0.0``.
        diagnostics: Also record and log, per update, on the device: global
            gradient norm, update norm, update-to-weight ratio; and the steps a
            ``LossScaleOptimizer`` skipped since the previous read (epoch logs:
            in the epoch). Costs a copy of the weights and a few reductions per
            update.
        optimizers: ``{label: optimizer}`` for models that train with several
            optimizers held outside ``model.optimizer`` (e.g. a GAN); by
            default ``model.optimizer``.

    Raises:
        ValueError: an argument is invalid (the message says what is valid).
        TypeError: an optimizer in ``optimizers`` is not introspectable, or,
            at the start of ``fit``, the model's is not (the message says how
            to make it so).

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
        optimizers: Mapping[str, Any] | None = None,
        **removed: Any,
    ) -> None:
        super().__init__()
        self._core = LoggerCore(Keras3, interval, hyperparameters, diagnostics, optimizers, removed)
        if not self._core.reads_batches:
            # No batch-level work: keep Keras's default (no-op) hook, so that
            # Keras may still dispatch batch callbacks asynchronously.
            self.on_train_batch_end = super().on_train_batch_end  # type: ignore[method-assign]

    @property
    def interval(self) -> str | int:
        """When it reads: ``"epoch"``, ``"batch"`` or every N steps."""
        interval: str | int = self._core.interval
        return interval

    @property
    def hyperparameters(self) -> tuple[str, ...]:
        """The other hyperparameters it logs."""
        return self._core.hyperparameters

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._core.train_begin(self.model)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._core.epoch_begin()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._core.batch_end(self.model, batch, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._core.epoch_end(self.model, logs)


def _applied_rate(optimizer: Any) -> float:
    """``float(optimizer.current_learning_rate)``, in two variable reads when cached.

    The property evaluates a comparison and a branch eagerly, several times
    the cost of reading the two variables it compares, and a logger reads it
    at every interval.
    """
    state = optimizer.__dict__.get("_introspection_state")
    if isinstance(state, AppliedRateState) and state.is_current(optimizer):
        return host_float(state.applied_learning_rate)
    return host_float(optimizer.current_learning_rate)


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
    return host_float(value)


def is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
