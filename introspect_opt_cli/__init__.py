"""The command line: ``introspect-opt plot SOURCE -o out.png``, or ``python -m introspect_opt``.

A schedule config of a Keras built-in class (or ``ScaledLearningRate`` around
one) is evaluated in NumPy (``_schedules``) and drawn with matplotlib alone
(``_draw``): no TensorFlow start-up, about a second in all. Everything else
(a ``.keras`` model, an optimizer config, a custom class) is built by Keras,
as ``introspect_opt.plot_learning_rate`` does it.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PROG = "introspect-opt"

_DESCRIPTION = """\
Plot what an optimizer's learning rate does over training: the rate
optimizer.current_learning_rate reads after each update (schedule, gradient
accumulation and plateau multiplier included), with the rates already applied
on top.
"""

_PLOT_EPILOG = """\
SOURCE is one of:
  model.keras   a model saved with model.save(); its optimizer is loaded with
                its state, so the plot marks the rate the last update applied
                (and the recorded history, if the optimizer keeps one).
  config.json   a schedule config, json.dump(keras.optimizers.schedules.serialize(s)),
                or an optimizer config, json.dump(keras.optimizers.serialize(opt)).
                A config of a built-in Keras schedule is evaluated without
                TensorFlow (about a second); anything else starts Keras.

examples:
  introspect-opt plot model.keras -o lr.png
  introspect-opt plot schedule.json -o lr.png --steps 20000
"""


class UsageError(Exception):
    """Bad input on the command line: reported in one line, exit status 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=_DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    plot = commands.add_parser(
        "plot",
        help="render the learning-rate schedule of a saved model or a config to a PNG",
        description=_DESCRIPTION,
        epilog=_PLOT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plot.add_argument("source", metavar="SOURCE", help="a .keras model file or a .json config")
    plot.add_argument("-o", "--output", required=True, metavar="PNG", help="the PNG file to write")
    plot.add_argument(
        "--steps",
        type=int,
        metavar="N",
        help="plot updates 0..N (default: max(1000, 2 x the updates already applied))",
    )
    plot.add_argument("--title", help="the plot title (default: describes SOURCE)")
    return parser


def _keras() -> Any:
    """Keras, with this package's optimizers registered for deserialization.

    Imported here, not at the top: ``--help`` and argument errors must not pay
    for TensorFlow's start-up.
    """
    import keras

    # Registers every Keras 3 class of the package (the ready-made optimizers,
    # the plateau schedule), so configs and .keras files naming them
    # deserialize, whichever world `import introspect_opt` names.
    import introspect_opt._features.plateau
    import introspect_opt._keras3.optimizers  # noqa: F401

    return keras


def _config_class(keras: Any, config: dict[str, Any]) -> tuple[type, str] | None:
    """The schedule or optimizer class a config names, and its public name; None if neither."""
    class_name = config["class_name"]
    registered = config.get("registered_name")
    candidates = []
    if isinstance(registered, str) and registered:
        candidates.append((keras.saving.get_registered_object(registered), registered))
    if isinstance(class_name, str):
        for namespace, prefix in (
            (keras.optimizers.schedules, "keras.optimizers.schedules"),
            (keras.optimizers, "keras.optimizers"),
        ):
            candidates.append((getattr(namespace, class_name, None), f"{prefix}.{class_name}"))
    for cls, name in candidates:
        if isinstance(cls, type) and issubclass(
            cls, (keras.optimizers.schedules.LearningRateSchedule, keras.optimizers.Optimizer)
        ):
            return cls, name
    return None


def _kind(keras: Any, cls: type) -> str:
    if issubclass(cls, keras.optimizers.schedules.LearningRateSchedule):
        return "a learning-rate schedule config"
    return "an optimizer config"


def _arguments(names: Sequence[str]) -> str:
    s = "s" if len(names) > 1 else ""
    return f"argument{s} " + ", ".join(repr(name) for name in names)


def _argument_problem(keras: Any, config: dict[str, Any]) -> str | None:
    """What a config of a known class lacks or has too much of, by the class's signature.

    Returns:
        None when the arguments fit, else what the config holds, for example
        "a learning-rate schedule config for keras.optimizers.schedules.CosineDecay
        without the required argument 'decay_steps'".
    """
    recognised = _config_class(keras, config)
    arguments = config.get("config")
    if recognised is None or not isinstance(arguments, dict):
        return None
    cls, name = recognised
    what = f"{_kind(keras, cls)} for {name}"
    parameters = inspect.signature(cls).parameters.values()
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    missing = [
        p.name
        for p in parameters
        if p.kind in named and p.default is p.empty and p.name not in arguments
    ]
    if missing:
        return f"{what} without the required {_arguments(missing)}"
    # With **kwargs the signature cannot tell which names are unknown; Keras's
    # own error, reported by the caller, does.
    if not any(p.kind is p.VAR_KEYWORD for p in parameters):
        accepted = [p.name for p in parameters]
        unknown = [key for key in arguments if key not in accepted]
        if unknown:
            return (
                f"{what} with the unknown {_arguments(unknown)} "
                f"({cls.__name__} takes {', '.join(accepted)})"
            )
    nested = arguments.get("learning_rate")
    if isinstance(nested, dict) and "class_name" in nested:
        problem = _argument_problem(keras, nested)
        if problem is not None:
            return f"{what} whose learning_rate is {problem}"
    return None


def _load_recognised(keras: Any, path: Path, config: dict[str, Any], cls: type, name: str) -> Any:
    """The object a config of a known schedule or optimizer class describes, or a UsageError."""
    problem = _argument_problem(keras, config)
    if problem is not None:
        raise UsageError(f"{path} holds {problem}")
    schedules = keras.optimizers.schedules
    is_schedule = issubclass(cls, schedules.LearningRateSchedule)
    deserialize = schedules.deserialize if is_schedule else keras.optimizers.deserialize
    try:
        return deserialize(config)
    except Exception as error:
        # Keras re-raises the constructor's TypeError inside a longer one of
        # its own; the constructor's says what is wrong.
        cause = error.__cause__ or error.__context__ or error
        raise UsageError(
            f"{path} holds {_kind(keras, cls)} for {name} that Keras cannot build: "
            f"{_one_line(cause)}"
        ) from None


def _read_json_config(path: Path) -> dict[str, Any]:
    """The Keras config in a JSON file, or a UsageError; imports no Keras."""
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"cannot read {path} as JSON: {error}") from None
    if not isinstance(config, dict) or "class_name" not in config:
        raise UsageError(
            f"{path} holds no Keras config (a JSON object with 'class_name'); write "
            "one with json.dump(keras.optimizers.schedules.serialize(schedule), f)"
        )
    return config


def _load_json_source(path: Path, config: dict[str, Any] | None = None) -> Any:
    if config is None:
        config = _read_json_config(path)
    keras = _keras()
    recognised = _config_class(keras, config)
    if recognised is not None:
        return _load_recognised(keras, path, config, *recognised)
    # Not a class Keras or this package registers: a custom class, perhaps
    # unregistered, of either kind; say what Keras said.
    errors = []
    for deserialize, expected in (
        (keras.optimizers.schedules.deserialize, keras.optimizers.schedules.LearningRateSchedule),
        (keras.optimizers.deserialize, keras.optimizers.Optimizer),
    ):
        try:
            obj = deserialize(config)
        except Exception as error:  # any failure: the other kind may fit
            errors.append(f"{type(error).__name__}: {str(error).splitlines()[0]}")
            continue
        if isinstance(obj, expected):
            return obj
    detail = f" ({errors[0]})" if errors else ""
    raise UsageError(
        f"{path} holds neither a learning-rate schedule config nor an optimizer config "
        f"(class_name {config['class_name']!r}){detail}"
    )


def _load_model_source(path: Path) -> Any:
    keras = _keras()

    try:
        model = keras.models.load_model(path, compile=True)
    except Exception as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise UsageError(
            f"cannot load {path} as a Keras model: {type(error).__name__}: {message}"
        ) from None
    if getattr(model, "optimizer", None) is None:
        raise UsageError(
            f"the model in {path} has no optimizer: it was saved before compile(); "
            "compile it and save it again, or plot a schedule config instead"
        )
    return model


def _source_path(source: str) -> Path:
    """SOURCE as a path to an existing .keras or .json file, or a UsageError."""
    path = Path(source)
    if not path.is_file():
        raise UsageError(f"SOURCE {source!r} does not exist or is not a file")
    suffix = path.suffix.lower()
    if suffix not in (".keras", ".json"):
        raise UsageError(
            f"SOURCE {source!r} has an unknown format ({suffix or 'no suffix'}); expected "
            "a .keras model file or a .json schedule or optimizer config"
        )
    return path


def load_source(source: str) -> Any:
    """A schedule, optimizer or compiled model from a file named on the command line."""
    path = _source_path(source)
    if path.suffix.lower() == ".keras":
        return _load_model_source(path)
    return _load_json_source(path)


def without_keras(config: dict[str, Any]) -> Any:
    """The schedule a config describes, evaluated in NumPy, when that gives Keras's values.

    Returns:
        A ``_schedules.NumpySchedule``, or None when Keras must build the
        config: a class other than Keras's built-in schedules and
        ``ScaledLearningRate``, values Keras would reject or compute
        differently, or a ``keras.json`` whose ``floatx`` is not float32.
    """
    from introspect_opt_cli import _schedules

    if _schedules.keras_floatx() != "float32":
        return None
    return _schedules.from_config(config)


# Step counters are int64; a plot samples at most a few thousand points of it.
_MAX_STEPS = 2**62


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"


def _plot(args: argparse.Namespace) -> str:
    if args.steps is not None and not 1 <= args.steps <= _MAX_STEPS:
        raise UsageError(f"--steps must be between 1 and {_MAX_STEPS}; received {args.steps}")
    output = Path(args.output)
    if not output.parent.is_dir():
        raise UsageError(f"cannot write {output}: folder {output.parent} does not exist")
    from introspect_opt_cli import _draw

    try:
        _draw.require_matplotlib(f"{PROG} plot")
    except ImportError as error:
        raise UsageError(_one_line(error)) from None
    path = _source_path(args.source)
    config = _read_json_config(path) if path.suffix.lower() == ".json" else None
    schedule = None if config is None else without_keras(config)
    draw: Callable[[], Path]
    if schedule is not None:

        def draw() -> Path:
            return _plot_without_keras(schedule, output, args.steps, args.title)

    else:
        # Imports Keras (seconds of TensorFlow start-up) only for a file that exists.
        source = _load_model_source(path) if config is None else _load_json_source(path, config)
        from introspect_opt._preview.preview import plot_learning_rate

        def draw() -> Path:
            return plot_learning_rate(source, output, iterations=args.steps, title=args.title)

    try:
        written = draw()
    except (ImportError, OSError, ValueError, TypeError, OverflowError) as error:
        raise UsageError(_one_line(error)) from None
    except Exception as error:
        # A schedule config Keras accepted but cannot evaluate (a string where
        # a number belongs, a value that overflows float32) fails inside the
        # backend, with the backend's own error types.
        raise UsageError(
            f"cannot evaluate the schedule from {args.source}: {_one_line(error)}"
        ) from None
    return str(written)


def _plot_without_keras(schedule: Any, output: Path, steps: int | None, title: str | None) -> Path:
    """What ``plot_learning_rate(schedule, output, iterations=steps, title=title)`` draws."""
    from introspect_opt_cli import _draw

    grid = _draw.update_grid(_draw.DEFAULT_PLOT_END if steps is None else steps)
    rates = _draw.rates_at_updates(schedule, grid, accumulation=1)
    return _draw.draw_learning_rate(
        output, grid, rates, title=schedule.name if title is None else title
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status (2 for bad input).

    Args:
        argv: The arguments after the program name; defaults to ``sys.argv[1:]``.

    Returns:
        0 on success, 2 when the input cannot be used (message on stderr).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        written = _plot(args)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    print(written)
    return 0
