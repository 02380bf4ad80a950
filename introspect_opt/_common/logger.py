"""The logger both Keras worlds' ``LearningRateLogger`` callbacks delegate to.

World-neutral: what it needs of Keras (finding the optimizers, reading a
variable on the host) comes through a :class:`World`.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import numpy as np

INTERVALS = ('"epoch"', '"batch"', "a positive int N (every N steps)")
PER_VARIABLE = "per_variable"
# The per-variable quantities the logger summarizes over variables, and how.
SUMMARIZED = ("update_to_weight_ratio", "effective_learning_rate")
SUMMARIES = ("min", "median", "max")


class World(Protocol):
    """What the logger needs of a Keras world (``_callbacks.logger``, ``_tf_keras.callbacks``)."""

    def check_optimizers(self, optimizers: Any) -> dict[str, Any] | None: ...
    def track(self, callback: str, model: Any, given: dict[str, Any] | None) -> list[Any]: ...
    def raw_steps(self, optimizer: Any) -> int: ...
    def enable_diagnostics(self, optimizer: Any, per_variable: bool = False) -> bool: ...
    def diagnostics(self, optimizer: Any) -> dict[str, float]: ...
    def per_variable_diagnostics(self, optimizer: Any) -> dict[str, dict[str, float]]: ...
    def applied_rate(self, optimizer: Any) -> float: ...
    def host_float(self, value: Any) -> float: ...
    def describe(self, optimizer: Any) -> str: ...
    def sync_training_state(self, model: Any) -> None: ...


def label(optimizer: Any, default_name: Callable[[type], str | None]) -> str:
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
        default_name(cls) == numbered[1]
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
    unwrap_optimizer: Callable[[Any], tuple[Any, bool]],
    introspectable: type,
    module: str,
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
    resolve: Callable[[Any, str], Any],
    unwrap_optimizer: Callable[[Any], tuple[Any, bool]],
    default_name: Callable[[type], str | None],
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
    return [(label(optimizer, default_name), optimizer, unwrap_optimizer(model.optimizer)[1])]


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

    def read_due(self, batch: int, interval: str | int) -> bool:
        """Counts up to ``batch``; whether a read at ``interval`` is due now.

        Every call for ``"batch"``; for ``N``, the first call that passes a
        multiple of ``N`` steps (``"epoch"``: never, its reads are at epoch ends).
        """
        before = self.batch_end(batch)
        if interval == "batch":
            return True
        return isinstance(interval, int) and self.total // interval > before // interval


class LoggerCore:
    """What ``LearningRateLogger`` does, for any Keras world's callback to delegate to.

    Keeps the arguments, the optimizers it logs, and a host-side step count;
    puts ``<label>/<quantity>`` values into the logs it is handed.
    """

    def __init__(
        self,
        world: World,
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
        self.diagnostics, self.per_variable = check_diagnostics(diagnostics)
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
            valid = hyperparameter_names(optimizer)
            missing = [n for n in self.hyperparameters if n not in valid]
            if missing:
                raise ValueError(
                    f"LearningRateLogger: {self.world.describe(optimizer)} ({name!r}) has "
                    f"no scalar hyperparameter {missing!r}; valid names are {valid}."
                )
            if self.diagnostics:
                created |= self.world.enable_diagnostics(optimizer, self.per_variable)
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
        if self.steps.read_due(batch, self.interval):
            self.read(model, logs, self.at_read)

    def epoch_end(self, model: Any, logs: dict[str, Any] | None) -> None:
        self.read(model, logs, self.at_epoch)

    def read(
        self, model: Any, logs: dict[str, Any] | None, since: dict[str, tuple[int, int]]
    ) -> None:
        if not self.tracked or logs is None:
            return
        self.world.sync_training_state(model)  # JAX keeps fit's state off the variables
        for name, optimizer, wrapped in self.tracked:
            logs[f"{name}/learning_rate"] = self.world.applied_rate(optimizer)
            for hyperparameter in self.hyperparameters:
                logs[f"{name}/{hyperparameter}"] = hyperparameter_value(
                    optimizer, hyperparameter, self.world.host_float
                )
            if self.diagnostics:
                for key, value in self.world.diagnostics(optimizer).items():
                    logs[f"{name}/{key}"] = value
                if self.per_variable:
                    rows = self.world.per_variable_diagnostics(optimizer)
                    for key, value in summarize(rows).items():
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


def check_diagnostics(diagnostics: Any) -> tuple[bool, bool]:
    """``LearningRateLogger(diagnostics=...)`` as (diagnostics on, per variable too)."""
    if isinstance(diagnostics, (bool, np.bool_)):
        return bool(diagnostics), False
    if isinstance(diagnostics, str) and diagnostics == PER_VARIABLE:
        return True, True
    raise ValueError(
        f"diagnostics must be True or False, or {PER_VARIABLE!r} for per-variable "
        f"diagnostics too; received {diagnostics!r}."
    )


def summarize(rows: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{"<quantity>/<min|median|max>": float}`` over the variables of a per-variable read.

    Variables without a value (``nan``: the last update did not touch them)
    are left out; a quantity no variable has is ``nan``.
    """
    summary: dict[str, float] = {}
    for quantity in SUMMARIZED:
        values = np.array([row[quantity] for row in rows.values()], dtype=np.float64)
        values = values[~np.isnan(values)]
        spread = (
            (np.min(values), np.median(values), np.max(values)) if values.size else (math.nan,) * 3
        )
        for name, value in zip(SUMMARIES, spread, strict=True):
            summary[f"{quantity}/{name}"] = float(value)
    return summary


def hyperparameter_names(optimizer: Any) -> list[str]:
    """The scalar hyperparameters an optimizer has (besides its rate)."""
    names = []
    for key, value in optimizer.get_config().items():
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key != "learning_rate" and (numeric or value is None):
            names.append(key)
    return sorted(names)


def hyperparameter_value(optimizer: Any, name: str, host_float: Callable[[Any], float]) -> float:
    value = getattr(optimizer, name)
    if value is None:
        # Off: no weight decay is a decay of 0; other switched-off options
        # (clipping, EMA frequency) have no number.
        return 0.0 if name == "weight_decay" else math.nan
    return host_float(value)


def is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def steps_between_reads(callback: str, interval: str | int, model: Any, params: Any) -> int:
    """The most steps ``fit`` can run between two reads of ``callback`` at ``interval``.

    What a rate history must hold so that no update is lost between reads.
    """
    per_execution = int(getattr(model, "steps_per_execution", 1) or 1)
    if isinstance(interval, int):
        # Reads happen at the end of the first call of the train function
        # that passes a multiple of N: up to N + spe - 1 steps apart.
        return interval if interval % per_execution == 0 else interval + per_execution - 1
    if interval == "batch":
        return per_execution
    steps = (params or {}).get("steps")
    if not steps:
        raise ValueError(
            f"{callback}(interval='epoch') cannot tell how many steps an epoch has "
            "(the dataset has no known length); pass history_size=<steps per "
            "epoch>, or a step interval."
        )
    # Keras runs whole blocks of steps_per_execution steps, also past the
    # epoch's declared step count.
    return -(-int(steps) // per_execution) * per_execution
