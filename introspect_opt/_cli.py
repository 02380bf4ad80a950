"""The command line: ``introspect-opt plot SOURCE -o out.png``, or ``python -m introspect_opt``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
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

examples:
  introspect-opt plot model.keras -o lr.png
  python -m introspect_opt plot schedule.json -o lr.png --steps 20000
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


def _load_json_source(path: Path) -> Any:
    import keras

    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"cannot read {path} as JSON: {error}") from None
    if not isinstance(config, dict) or "class_name" not in config:
        raise UsageError(
            f"{path} holds no Keras config (a JSON object with 'class_name'); write "
            "one with json.dump(keras.optimizers.schedules.serialize(schedule), f)"
        )
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
    import keras

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


def load_source(source: str) -> Any:
    """A schedule, optimizer or compiled model from a file named on the command line."""
    path = Path(source)
    if not path.is_file():
        raise UsageError(f"SOURCE {source!r} does not exist or is not a file")
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return _load_model_source(path)
    if suffix == ".json":
        return _load_json_source(path)
    raise UsageError(
        f"SOURCE {source!r} has an unknown format ({suffix or 'no suffix'}); expected "
        "a .keras model file or a .json schedule or optimizer config"
    )


# Step counters are int64; a plot samples at most a few thousand points of it.
_MAX_STEPS = 2**62


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"


def _plot(args: argparse.Namespace) -> str:
    from ._preview import plot_learning_rate

    if args.steps is not None and not 1 <= args.steps <= _MAX_STEPS:
        raise UsageError(f"--steps must be between 1 and {_MAX_STEPS}; received {args.steps}")
    output = Path(args.output)
    if not output.parent.is_dir():
        raise UsageError(f"cannot write {output}: folder {output.parent} does not exist")
    source = load_source(args.source)
    try:
        path = plot_learning_rate(source, output, iterations=args.steps, title=args.title)
    except (ImportError, OSError, ValueError, TypeError, OverflowError) as error:
        raise UsageError(_one_line(error)) from None
    except Exception as error:
        # A schedule config Keras accepted but cannot evaluate (a string where
        # a number belongs, a value that overflows float32) fails inside the
        # backend, with the backend's own error types.
        raise UsageError(
            f"cannot evaluate the schedule from {args.source}: {_one_line(error)}"
        ) from None
    return str(path)


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
