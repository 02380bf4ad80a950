"""The command line: ``python -m introspect_opt plot`` / ``introspect-opt plot``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from helpers import make_data, make_model

import introspect_opt
import introspect_opt_cli as _cli

ROOT = Path(__file__).resolve().parents[1]
SCHEDULE = keras.optimizers.schedules.CosineDecay(0.0, 900, warmup_target=0.1, warmup_steps=100)


# A fresh process costs ~5 s of start-up on CI's cores; what runs inside is
# main(), which the in-process tests below exercise on every backend.
in_subprocess = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="subprocess start-up is backend-independent; main() is tested in-process",
)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m introspect_opt ARGS`` in a fresh process, as a user runs it."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-m", "introspect_opt", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def png_pixels(path: Path) -> np.ndarray:
    import matplotlib.image

    return np.asarray(matplotlib.image.imread(path))


def assert_real_plot(path: Path) -> None:
    pixels = png_pixels(path)
    assert pixels.shape == (450, 800, 4)
    assert len(np.unique(pixels.reshape(-1, 4), axis=0)) > 50


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A trained model saved to .keras, one saved before compile, and config JSON files."""
    folder = tmp_path_factory.mktemp("cli")
    model = make_model()
    model.save(folder / "uncompiled.keras")
    model.compile(introspect_opt.IntrospectableSGD(SCHEDULE, momentum=0.9), loss="mse")
    x, y = make_data(n=32)
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)  # 16 updates
    model.save(folder / "trained.keras")
    (folder / "schedule.json").write_text(
        json.dumps(keras.optimizers.schedules.serialize(SCHEDULE))
    )
    optimizer = introspect_opt.IntrospectableAdam(SCHEDULE, gradient_accumulation_steps=2)
    (folder / "optimizer.json").write_text(json.dumps(keras.optimizers.serialize(optimizer)))
    (folder / "layer.json").write_text(json.dumps(keras.layers.serialize(keras.layers.Dense(2))))
    (folder / "notes.txt").write_text("not a model")
    return {p.stem: p for p in folder.iterdir()}


@pytest.mark.slow
@in_subprocess
def test_plot_of_a_saved_model_in_a_subprocess(files: dict[str, Path], tmp_path: Path) -> None:
    """`python -m introspect_opt plot m.keras -o out.png` writes the plot, prints its path."""
    out = tmp_path / "model.png"
    done = run_cli("plot", str(files["trained"]), "-o", str(out), "--steps", "200")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == str(out)
    assert_real_plot(out)


@in_subprocess
def test_bad_input_in_a_subprocess_is_one_line_and_exit_status_2(tmp_path: Path) -> None:
    """A missing SOURCE exits with status 2 and one error line, no traceback."""
    done = run_cli("plot", str(tmp_path / "missing.keras"), "-o", str(tmp_path / "x.png"))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"introspect-opt: error: SOURCE '{tmp_path / 'missing.keras'}' does not exist or is "
        "not a file"
    )
    assert not (tmp_path / "x.png").exists()


def test_model_plot_marks_the_applied_rate(files: dict[str, Path], tmp_path: Path) -> None:
    """The loaded optimizer's current point is drawn over the same schedule's curve."""
    with_state = tmp_path / "model.png"
    bare = tmp_path / "bare.png"
    assert _cli.main(["plot", str(files["trained"]), "-o", str(with_state), "--title", "t"]) == 0
    assert _cli.main(["plot", str(files["schedule"]), "-o", str(bare), "--title", "t"]) == 0
    # Same schedule, range and title: only the marker of update 16 differs.
    changed = np.any(png_pixels(with_state) != png_pixels(bare), axis=-1).sum()
    assert changed > 100, changed


def test_optimizer_config_json(files: dict[str, Path], tmp_path: Path) -> None:
    """An optimizer config from keras.optimizers.serialize is accepted (accumulation included)."""
    out = tmp_path / "optimizer.png"
    assert _cli.main(["plot", str(files["optimizer"]), "-o", str(out), "--steps", "50"]) == 0
    assert_real_plot(out)


@pytest.mark.parametrize(
    ("source", "steps", "message"),
    [
        (
            "notes",
            [],
            "SOURCE '{path}' has an unknown format (.txt); expected a .keras model file or "
            "a .json schedule or optimizer config",
        ),
        (
            "uncompiled",
            [],
            "the model in {path} has no optimizer: it was saved before compile(); compile "
            "it and save it again, or plot a schedule config instead",
        ),
        (
            "layer",
            [],
            "{path} holds neither a learning-rate schedule config nor an optimizer config "
            "(class_name 'Dense')",
        ),
        ("schedule", ["--steps", "0"], "--steps must be between 1 and 4611686018427387904"),
        ("schedule", ["--steps", "99999999999999999999"], "--steps must be between 1 and"),
    ],
)
def test_bad_input_exits_with_status_2(
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    source: str,
    steps: list[str],
    message: str,
) -> None:
    """Unknown formats, no optimizer, other configs, bad --steps: one line, status 2."""
    path = files[source]
    status = _cli.main(["plot", str(path), "-o", str(tmp_path / "x.png"), *steps])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("introspect-opt: error: " + message.format(path=path)), err
    assert err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()


def test_help_explains_sources(capsys: pytest.CaptureFixture[str]) -> None:
    """`plot --help` says what SOURCE may be and exits with status 0."""
    with pytest.raises(SystemExit) as caught:
        _cli.main(["plot", "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert "keras.optimizers.schedules.serialize" in out and "model.save()" in out


def console_script_target() -> tuple[str, str]:
    """The (module, function) the `introspect-opt` script in pyproject.toml runs."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    scripts = re.search(r"^\[project\.scripts\]\n(.*?)\n\n", pyproject, re.MULTILINE | re.DOTALL)
    assert scripts is not None
    target = re.search(r'^introspect-opt = "(.+)"$', scripts.group(1), re.MULTILINE)
    assert target is not None
    module, _, name = target.group(1).partition(":")
    return module, name


def test_console_script_points_at_main() -> None:
    """The `introspect-opt` script in pyproject.toml resolves to the same main()."""
    module, name = console_script_target()
    assert (module, name) == ("introspect_opt_cli", "main")
    assert getattr(sys.modules[module], name) is _cli.main


def test_a_config_keras_cannot_evaluate_exits_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config that deserializes but cannot be evaluated: one line, status 2, no traceback."""
    import json

    import keras

    config = keras.optimizers.schedules.serialize(
        keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    )
    config["config"]["initial_learning_rate"] = "abc"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    assert _cli.main(["plot", str(path), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("introspect-opt: error: ") and "Error: " in err, err
    assert err.count("\n") == 1


# What `--help` and argument errors may import: the command line itself, no
# Keras, no backend, no NumPy, nothing of introspect_opt (whose __init__
# registers the classes with Keras, and so imports it).
HEAVY = {"keras", "tensorflow", "jax", "torch", "numpy", "matplotlib", "h5py"}
LIGHT_PACKAGE_MODULES = {"introspect_opt_cli", "introspect_opt_cli.__main__"}


def imports_of(*args: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """Runs ``python -X importtime ARGS`` as a user would; the modules it imported and the run."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    modules = set()
    other_lines = []
    for line in done.stderr.splitlines():
        if line.startswith("import time:"):
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                modules.add(name)
        else:
            other_lines.append(line)
    done.stderr = "\n".join(other_lines)
    return modules, done


def console_script(*args: str) -> list[str]:
    """Arguments for ``python`` that run the installed `introspect-opt` script (as its shebang)."""
    script = Path(sys.executable).parent / "introspect-opt"
    module, name = console_script_target()
    assert f"from {module} import {name}" in script.read_text(), script
    return [str(script), *args]


@pytest.mark.parametrize(
    ("args", "status", "stdout_start", "stderr"),
    [
        pytest.param(
            ["-m", "introspect_opt_cli", "--help"], 0, "usage: introspect-opt", "", id="-m --help"
        ),
        pytest.param(
            ["-m", "introspect_opt_cli", "plot", "--help"],
            0,
            "usage: introspect-opt plot",
            "",
            id="-m plot --help",
        ),
        pytest.param(console_script("--help"), 0, "usage: introspect-opt", "", id="script --help"),
        pytest.param(
            console_script("plot", "model.keras"),
            2,
            "",
            "usage: introspect-opt plot [-h] -o PNG [--steps N] [--title TITLE] SOURCE\n"
            "introspect-opt plot: error: the following arguments are required: -o/--output",
            id="script argument error",
        ),
    ],
)
def test_help_and_argument_errors_import_neither_keras_nor_a_backend(
    args: list[str], status: int, stdout_start: str, stderr: str
) -> None:
    """`--help` and argument errors import only the command line: no TensorFlow start-up."""
    modules, done = imports_of(*args)
    assert done.returncode == status, done.stderr[-3000:]
    assert done.stdout.startswith(stdout_start)
    assert done.stderr == stderr  # nothing from TensorFlow's start-up
    assert {m for m in modules if m.split(".")[0] in HEAVY} == set()
    ours = {m for m in modules if m.split(".")[0] in ("introspect_opt", "introspect_opt_cli")}
    assert ours <= LIGHT_PACKAGE_MODULES


def write_config(folder: Path, config: dict[str, Any]) -> Path:
    """`config` as a JSON file, as the CLI's users write one."""
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    return path


def cosine_config() -> dict[str, Any]:
    return keras.optimizers.schedules.serialize(
        keras.optimizers.schedules.CosineDecay(0.1, decay_steps=100)
    )


def assert_cli_error(path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Runs `plot PATH`: status 2, one line, no PNG; returns the message after its prefix."""
    assert _cli.main(["plot", str(path), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert not (tmp_path / "x.png").exists()
    prefix = f"introspect-opt: error: {path} holds "
    assert err.startswith(prefix), err
    return err[len(prefix) :].rstrip("\n")


def test_schedule_config_missing_a_required_argument(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CosineDecay config without decay_steps names the class and the missing argument."""
    config = cosine_config()
    del config["config"]["decay_steps"]
    assert assert_cli_error(write_config(tmp_path, config), tmp_path, capsys) == (
        "a learning-rate schedule config for keras.optimizers.schedules.CosineDecay without "
        "the required argument 'decay_steps'"
    )


def test_schedule_config_missing_two_required_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every missing argument is named, in the order of the constructor's signature."""
    config = keras.optimizers.schedules.serialize(
        keras.optimizers.schedules.PiecewiseConstantDecay([10], [0.1, 0.01])
    )
    config["config"] = {}
    assert assert_cli_error(write_config(tmp_path, config), tmp_path, capsys) == (
        "a learning-rate schedule config for keras.optimizers.schedules.PiecewiseConstantDecay "
        "without the required arguments 'boundaries', 'values'"
    )


def test_schedule_config_with_an_unknown_argument(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A misspelt argument is named, with the arguments the class takes."""
    config = cosine_config()
    config["config"]["decay_step"] = 100
    assert assert_cli_error(write_config(tmp_path, config), tmp_path, capsys) == (
        "a learning-rate schedule config for keras.optimizers.schedules.CosineDecay with the "
        "unknown argument 'decay_step' (CosineDecay takes initial_learning_rate, decay_steps, "
        "alpha, name, warmup_target, warmup_steps)"
    )


def test_optimizer_config_whose_schedule_misses_an_argument(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An optimizer config's learning_rate schedule is checked the same way, and said to be."""
    config = keras.optimizers.serialize(
        introspect_opt.IntrospectableAdam(keras.optimizers.schedules.CosineDecay(0.1, 100))
    )
    del config["config"]["learning_rate"]["config"]["decay_steps"]
    assert assert_cli_error(write_config(tmp_path, config), tmp_path, capsys) == (
        "an optimizer config for introspect_opt>IntrospectableAdam whose learning_rate is a "
        "learning-rate schedule config for keras.optimizers.schedules.CosineDecay without the "
        "required argument 'decay_steps'"
    )


def test_optimizer_config_with_an_unknown_argument(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An optimizer takes **kwargs, so Keras's own error names the argument, after the class."""
    config = keras.optimizers.serialize(keras.optimizers.Adam(0.1))
    config["config"]["momentum"] = 0.9
    assert assert_cli_error(write_config(tmp_path, config), tmp_path, capsys) == (
        "an optimizer config for keras.optimizers.Adam that Keras cannot build: "
        "ValueError: Argument(s) not recognized: {'momentum': 0.9}"
    )


def test_schedule_config_the_constructor_rejects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Arguments that fit the signature but not each other: the constructor's own error."""
    config = keras.optimizers.schedules.serialize(
        keras.optimizers.schedules.PiecewiseConstantDecay([10], [0.1, 0.01])
    )
    config["config"]["values"] = [0.1]
    message = assert_cli_error(write_config(tmp_path, config), tmp_path, capsys)
    assert message.startswith(
        "a learning-rate schedule config for keras.optimizers.schedules.PiecewiseConstantDecay "
        "that Keras cannot build: ValueError: The length of boundaries should be 1 less than "
        "the length of values."
    ), message
