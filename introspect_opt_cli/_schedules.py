"""Keras's built-in learning-rate schedules, evaluated with NumPy from their configs.

``introspect-opt plot schedule.json`` would otherwise import TensorFlow (seconds
of start-up) to evaluate a formula of a few float32 operations. For a config
this module fully understands, it computes the same formula in NumPy, in the
order and the dtype Keras 3.15 computes it (``keras/src/optimizers/schedules/
learning_rate_schedule.py``): every intermediate is float32, Python numbers
are rounded to float32 where Keras converts them, and ``ops.cond`` is an
elementwise ``np.where`` over both branches.

``+``, ``-``, ``*``, ``/``, ``floor``, ``ceil`` and comparisons are IEEE
operations: their float32 results are the same bits in NumPy as in any
backend, so ``PiecewiseConstantDecay`` and ``InverseTimeDecay`` are bit-exact.
``pow``, ``cos`` and ``log`` (the other four) are computed in float64 and
rounded to float32 once, which is what TensorFlow's per-step (scalar) kernels
return: against ``schedule(step)`` called one step at a time, as the update
step calls it, 2 of 5,776 steps of the tested configs differ, by 1 ulp
(Keras 3.15.1, TensorFlow 2.21, x86-64). TensorFlow's vectorised kernels (what
``preview_learning_rates`` evaluates), JAX's and XLA's differ from those
per-step values, and from each other, by up to a few ulps of the peak rate;
so do ours from them. Subnormal rates stay subnormal here, where TensorFlow
flushes them to zero. tests/test_cli.py measures all of it.

Anything else, and any config whose values Keras would treat differently
(an integer initial rate makes Keras compute in int32; a string where a number
belongs; a class registered under another package), is not evaluated here:
:func:`from_config` returns ``None`` and the caller asks Keras.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# Python ints up to 2**53 convert to float64 exactly, so np.float32(n) rounds
# once, as Keras's int -> float32 cast does.
_EXACT_INT = 2**53
_INT64 = 2**63

Steps = np.ndarray  # int64 raw step counters, any shape
Evaluate = Callable[[Steps], np.ndarray]


@dataclass(frozen=True)
class NumpySchedule:
    """A schedule evaluated in NumPy: ``schedule(steps)`` is float32, shaped as ``steps``."""

    name: str  # the class name, as ``type(schedule).__name__`` reads in Keras
    evaluate: Evaluate

    def __call__(self, steps: Steps) -> np.ndarray:
        return self.evaluate(np.asarray(steps, dtype=np.int64))


class _NotHere(Exception):
    """The config is not one this module evaluates exactly as Keras would."""


# --------------------------------------------------------------------------------------
# Config values: accepted only when Keras would compute with them what we compute.


def _number(value: Any) -> float:
    """A finite int or float that float32 holds (no bool, no string, no huge int)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _NotHere
    if isinstance(value, int) and abs(value) > _EXACT_INT:
        raise _NotHere
    with np.errstate(over="ignore"):
        if not (math.isfinite(value) and np.isfinite(np.float32(value))):
            raise _NotHere
    if value != 0 and abs(np.float32(value)) < np.finfo(np.float32).tiny:
        # Subnormal (or flushed to 0) in float32: TensorFlow's kernels flush
        # such values to zero, NumPy does not; left to Keras.
        raise _NotHere
    return float(value)


def _float32(value: Any) -> np.float32:
    """``ops.cast(value, "float32")`` of a config number."""
    cast: np.float32 = np.float32(_number(value))
    return cast


def _initial_rate(value: Any) -> np.float32:
    """``ops.convert_to_tensor(initial_learning_rate)``: float32 for a Python float only.

    An int gives an int32 tensor, and Keras then computes the whole schedule
    in integers: left to Keras.
    """
    if not isinstance(value, float):
        raise _NotHere
    return _float32(value)


def _positive(value: Any) -> float:
    """A step count Keras's constructor accepts (``> 0``); else Keras's error."""
    number = _number(value)
    if number <= 0:
        raise _NotHere
    return number


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _NotHere
    return value


def _check_name(value: Any) -> None:
    # Keras's name_scope raises for anything else when the schedule is called.
    if not isinstance(value, str) or "/" in value:
        raise _NotHere


def _arguments(
    config: Any, required: tuple[str, ...], optional: Mapping[str, Any]
) -> dict[str, Any]:
    """The constructor's arguments: all required ones given, no unknown one, defaults filled."""
    if not isinstance(config, dict) or not all(isinstance(key, str) for key in config):
        raise _NotHere
    if any(name not in config for name in required):
        raise _NotHere
    if any(key not in required and key not in optional for key in config):
        raise _NotHere
    arguments = {**optional, **config}
    _check_name(arguments["name"])
    return arguments


def _f64(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _f32(x: Any) -> np.ndarray:
    """An array already float32 in every path, typed for mypy (NumPy's ufuncs return Any)."""
    return np.asarray(x, dtype=np.float32)


def _pow(base: Any, exponent: Any) -> np.ndarray:
    """float32 ``pow`` of float32 arguments: computed in float64, rounded once.

    That is the correctly rounded result but for rare double roundings, and
    what TensorFlow's per-step (scalar) kernels return: measured equal for
    100% of ``pow``, 98.8% of ``cos`` and 99.9% of ``log`` results over
    thousands of schedule arguments. Its vectorised kernels, JAX's and
    XLA's differ from it, and from each other, in the last bit.
    """
    with np.errstate(all="ignore"):  # inf and nan as in float32 on any backend
        return _f32(np.power(_f64(base), _f64(exponent)))


def _cos(x: Any) -> np.ndarray:
    """float32 ``cos``, as :func:`_pow`."""
    with np.errstate(all="ignore"):
        return _f32(np.cos(_f64(x)))


def _log(x: Any) -> np.ndarray:
    """float32 ``log``, as :func:`_pow`."""
    with np.errstate(all="ignore"):
        return _f32(np.log(_f64(x)))


def _as_float(steps: Steps) -> np.ndarray:
    """``ops.cast(step, "float32")``: round to nearest, as every backend casts."""
    return steps.astype(np.float32)


# --------------------------------------------------------------------------------------
# The schedules, in the order of Keras's learning_rate_schedule.py.


def _exponential_decay(config: Any) -> Evaluate:
    a = _arguments(
        config,
        ("initial_learning_rate", "decay_steps", "decay_rate"),
        {"staircase": False, "name": "ExponentialDecay"},
    )
    initial = _initial_rate(a["initial_learning_rate"])
    decay_steps = np.float32(_positive(a["decay_steps"]))
    decay_rate = _float32(a["decay_rate"])
    staircase = _flag(a["staircase"])

    def evaluate(steps: Steps) -> np.ndarray:
        p = _as_float(steps) / decay_steps
        if staircase:
            p = np.floor(p)
        return _f32(initial * _pow(decay_rate, p))

    return evaluate


def _piecewise_constant_decay(config: Any) -> Evaluate:
    a = _arguments(config, ("boundaries", "values"), {"name": "PiecewiseConstant"})
    boundaries, values = a["boundaries"], a["values"]
    if not isinstance(boundaries, list) or not isinstance(values, list):
        raise _NotHere
    # Keras raises for other lengths, and indexes boundaries[0] when called.
    if not boundaries or len(boundaries) != len(values) - 1:
        raise _NotHere
    # Boundaries are cast to the step's int64: exact for ints; values[0]'s
    # dtype is the result's, float32 when every value is a Python float.
    if any(isinstance(b, bool) or not isinstance(b, int) or abs(b) >= _INT64 for b in boundaries):
        raise _NotHere
    if not all(isinstance(v, float) for v in values):
        raise _NotHere
    rates = [_float32(v) for v in values]

    def evaluate(steps: Steps) -> np.ndarray:
        # Keras sums indicator * value over the intervals in this order; for
        # increasing boundaries exactly one term is not zero.
        result = np.zeros(steps.shape, np.float32)
        result += (steps <= boundaries[0]).astype(np.float32) * rates[0]
        result += (steps > boundaries[-1]).astype(np.float32) * rates[-1]
        for low, high, rate in zip(boundaries[:-1], boundaries[1:], rates[1:-1], strict=True):
            result += ((steps > low) & (steps <= high)).astype(np.float32) * rate
        return result

    return evaluate


def _polynomial_decay(config: Any) -> Evaluate:
    a = _arguments(
        config,
        ("initial_learning_rate", "decay_steps"),
        {"end_learning_rate": 0.0001, "power": 1.0, "cycle": False, "name": "PolynomialDecay"},
    )
    initial = _initial_rate(a["initial_learning_rate"])
    end = _float32(a["end_learning_rate"])
    power = _float32(a["power"])
    decay_steps = np.float32(_positive(a["decay_steps"]))
    cycle = _flag(a["cycle"])

    def evaluate(steps: Steps) -> np.ndarray:
        step = _as_float(steps)
        if cycle:
            # `step / self.decay_steps`: the Python number is converted to float32.
            multiplier = np.where(step == 0, np.float32(1.0), np.ceil(step / decay_steps))
            p = step / (decay_steps * multiplier)
        else:
            p = np.minimum(step, decay_steps) / decay_steps
        return _f32((initial - end) * _pow(np.float32(1) - p, power) + end)

    return evaluate


def _inverse_time_decay(config: Any) -> Evaluate:
    a = _arguments(
        config,
        ("initial_learning_rate", "decay_steps", "decay_rate"),
        {"staircase": False, "name": "InverseTimeDecay"},
    )
    initial = _initial_rate(a["initial_learning_rate"])
    decay_steps = np.float32(_positive(a["decay_steps"]))
    decay_rate = _float32(a["decay_rate"])
    staircase = _flag(a["staircase"])

    def evaluate(steps: Steps) -> np.ndarray:
        p = _as_float(steps) / decay_steps
        if staircase:
            p = np.floor(p)
        return _f32(initial / (np.float32(1) + decay_rate * p))

    return evaluate


_PI = np.float32(math.pi)


def _cosine_decay(config: Any) -> Evaluate:
    a = _arguments(
        config,
        ("initial_learning_rate", "decay_steps"),
        {"alpha": 0.0, "name": "CosineDecay", "warmup_target": None, "warmup_steps": 0},
    )
    initial = _initial_rate(a["initial_learning_rate"])
    decay_steps = np.float32(_positive(a["decay_steps"]))
    alpha = _number(a["alpha"])
    # `(1 - self.alpha) * cosine + self.alpha`: Python arithmetic, then float32.
    one_minus_alpha, alpha32 = np.float32(1 - alpha), np.float32(alpha)
    warmup_target = None if a["warmup_target"] is None else _float32(a["warmup_target"])
    warmup_steps = _float32(a["warmup_steps"])

    def decay(step: np.ndarray, decay_from: np.float32) -> np.ndarray:
        fraction = step / decay_steps
        cosine = np.float32(0.5) * (np.float32(1.0) + _cos(_PI * fraction))
        return _f32(decay_from * (one_minus_alpha * cosine + alpha32))

    def evaluate(steps: Steps) -> np.ndarray:
        step = _as_float(steps)
        if warmup_target is None:
            return decay(np.minimum(step, decay_steps), initial)
        step = np.minimum(step, decay_steps + warmup_steps)
        with np.errstate(divide="ignore", invalid="ignore"):  # the branch not taken
            warmup = (warmup_target - initial) * (step / warmup_steps) + initial
        return np.where(step < warmup_steps, warmup, decay(step - warmup_steps, warmup_target))

    return evaluate


def _cosine_decay_restarts(config: Any) -> Evaluate:
    a = _arguments(
        config,
        ("initial_learning_rate", "first_decay_steps"),
        {"t_mul": 2.0, "m_mul": 1.0, "alpha": 0.0, "name": "SGDRDecay"},
    )
    initial = _initial_rate(a["initial_learning_rate"])
    first_decay_steps = np.float32(_positive(a["first_decay_steps"]))
    alpha = _float32(a["alpha"])
    t_mul = _float32(a["t_mul"])
    m_mul = _float32(a["m_mul"])
    one = np.float32(1.0)

    def evaluate(steps: Steps) -> np.ndarray:
        fraction = _as_float(steps) / first_decay_steps
        with np.errstate(divide="ignore", invalid="ignore"):  # as in float32 on any backend
            if t_mul == one:
                restart = np.floor(fraction)
                fraction = fraction - restart
            else:
                restart = np.floor(_log(one - fraction * (one - t_mul)) / _log(t_mul))
                sum_r = (one - _pow(t_mul, restart)) / (one - t_mul)
                fraction = (fraction - sum_r) / _pow(t_mul, restart)
            m_fac = _pow(m_mul, restart)
            cosine = np.float32(0.5) * m_fac * (one + _cos(_PI * fraction))
            return _f32(initial * ((one - alpha) * cosine + alpha))

    return evaluate


# --------------------------------------------------------------------------------------
# Our own schedule.

SCALED_LEARNING_RATE = "introspect_opt>ScaledLearningRate"


def _scaled_learning_rate(config: Any) -> Evaluate:
    """``ScaledLearningRate(schedule, multiplier)`` as saved: the schedule times the multiplier."""
    if not isinstance(config, dict) or "learning_rate" not in config:
        raise _NotHere
    if any(key not in ("learning_rate", "multiplier") for key in config):
        raise _NotHere
    multiplier = config.get("multiplier", 1.0)
    if _number(multiplier) < 0:
        raise _NotHere  # the constructor raises
    scale = _float32(multiplier)
    inner_config = config["learning_rate"]
    if isinstance(inner_config, dict) and _is_ours(inner_config):
        # The constructor unwraps a nested ScaledLearningRate, dropping its multiplier.
        inner_config = inner_config.get("config", {}).get("learning_rate")
    inner = from_config(inner_config)
    if inner is None:
        raise _NotHere

    def evaluate(steps: Steps) -> np.ndarray:
        rate = inner(steps)
        # ScaledLearningRate keeps the unscaled bits at exactly 1 (a select).
        return rate if scale == 1 else rate * scale

    return evaluate


def _is_ours(config: Mapping[str, Any]) -> bool:
    return (
        config.get("class_name") == "ScaledLearningRate"
        and config.get("registered_name") == SCALED_LEARNING_RATE
    )


# --------------------------------------------------------------------------------------

BUILTIN: dict[str, Callable[[Any], Evaluate]] = {
    "ExponentialDecay": _exponential_decay,
    "PiecewiseConstantDecay": _piecewise_constant_decay,
    "PolynomialDecay": _polynomial_decay,
    "InverseTimeDecay": _inverse_time_decay,
    "CosineDecay": _cosine_decay,
    "CosineDecayRestarts": _cosine_decay_restarts,
}

_CONFIG_KEYS = {"module", "class_name", "config", "registered_name"}


def _is_keras_builtin(config: Mapping[str, Any]) -> bool:
    """Keras's own class, not one a user registered under the same class name."""
    registered = config.get("registered_name")
    module = config.get("module")
    return (
        config.get("class_name") in BUILTIN
        and registered in (None, config.get("class_name"))
        and (module is None or (isinstance(module, str) and module.startswith("keras.")))
    )


def keras_floatx() -> str | None:
    """The ``floatx`` Keras will start with in a fresh process, from its ``keras.json``.

    The same file Keras reads (``$KERAS_HOME/keras.json``, else
    ``~/.keras/keras.json``, or ``/tmp/.keras`` when the home folder is not
    writable); ``"float32"`` without one. None when the file cannot be read:
    Keras then decides.
    """
    if "KERAS_HOME" in os.environ:
        folder = os.environ["KERAS_HOME"]
    else:
        base = os.path.expanduser("~")
        folder = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    path = os.path.expanduser(os.path.join(folder, "keras.json"))
    if not os.path.exists(path):
        return "float32"
    try:
        with open(path) as file:
            config = json.load(file)
    except (OSError, ValueError):
        return None
    floatx = config.get("floatx", "float32") if isinstance(config, dict) else None
    return floatx if isinstance(floatx, str) else None


def from_config(config: Any) -> NumpySchedule | None:
    """The schedule a serialized config describes, evaluated in NumPy; None to ask Keras.

    Args:
        config: What ``keras.optimizers.schedules.serialize(schedule)`` returns
            (read back from JSON), for a built-in Keras schedule or an
            ``introspect_opt.ScaledLearningRate`` around one; or a Python float,
            a constant rate.

    Returns:
        The schedule, or None when the config is anything else (another
        class, values Keras would reject or compute differently): Keras must
        then build and evaluate it.
    """
    if isinstance(config, float):
        try:
            rate = _float32(config)
        except _NotHere:
            return None
        return NumpySchedule(f"constant {config:g}", lambda steps: np.full(steps.shape, rate))
    if not isinstance(config, dict) or not set(config) <= _CONFIG_KEYS:
        return None
    if _is_keras_builtin(config):
        build = BUILTIN[config["class_name"]]
    elif _is_ours(config):
        build = _scaled_learning_rate
    else:
        return None
    try:
        evaluate = build(config.get("config"))
    except _NotHere:
        return None
    return NumpySchedule(config["class_name"], evaluate)
