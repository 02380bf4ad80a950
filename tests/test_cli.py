"""The command line: ``python -m introspect_opt plot`` / ``introspect-opt plot``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
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


# ---------------------------------------------------------------------------------------------
# Schedule configs evaluated without Keras (introspect_opt_cli._schedules)

SCHEDULES = keras.optimizers.schedules

# Several configs of every built-in schedule: warmups, boundaries, cycles and
# restarts fall inside the updates compared below.
BUILTIN_CONFIGS: dict[str, Any] = {
    "ExponentialDecay": SCHEDULES.ExponentialDecay(0.1, decay_steps=7, decay_rate=0.8),
    "ExponentialDecay-staircase": SCHEDULES.ExponentialDecay(0.1, 7, 0.8, staircase=True),
    "ExponentialDecay-slow": SCHEDULES.ExponentialDecay(3e-4, 1000, 0.96),
    "PiecewiseConstantDecay": SCHEDULES.PiecewiseConstantDecay(
        [5, 20, 30], [0.1, 0.05, 0.01, 1e-3]
    ),
    "PiecewiseConstantDecay-one-boundary": SCHEDULES.PiecewiseConstantDecay([100], [1.0, 0.3]),
    "PolynomialDecay": SCHEDULES.PolynomialDecay(0.1, 25, end_learning_rate=0.01, power=2.0),
    "PolynomialDecay-defaults": SCHEDULES.PolynomialDecay(1e-3, 1000),
    "PolynomialDecay-cycle": SCHEDULES.PolynomialDecay(0.1, 9, 0.01, power=0.5, cycle=True),
    "PolynomialDecay-cycle-cubic": SCHEDULES.PolynomialDecay(0.5, 33, 0.0, power=3.0, cycle=True),
    "InverseTimeDecay": SCHEDULES.InverseTimeDecay(0.1, decay_steps=4, decay_rate=0.5),
    "InverseTimeDecay-staircase": SCHEDULES.InverseTimeDecay(0.1, 4, 0.5, staircase=True),
    "CosineDecay": SCHEDULES.CosineDecay(0.1, decay_steps=30, alpha=0.1),
    "CosineDecay-long": SCHEDULES.CosineDecay(1e-3, 10000),
    "CosineDecay-warmup": SCHEDULES.CosineDecay(0.0, 25, warmup_target=0.1, warmup_steps=8),
    # alpha 0.33: float32(1 - alpha) != 1 - float32(alpha); Keras computes the former.
    "CosineDecay-warmup-alpha": SCHEDULES.CosineDecay(
        0.01, 200, alpha=0.33, warmup_target=0.2, warmup_steps=50
    ),
    "CosineDecay-warmup-0-steps": SCHEDULES.CosineDecay(0.01, 50, warmup_target=0.2),
    "CosineDecayRestarts": SCHEDULES.CosineDecayRestarts(0.1, 6, t_mul=1.0, m_mul=0.9),
    "CosineDecayRestarts-geometric": SCHEDULES.CosineDecayRestarts(0.1, 5, t_mul=2.0, alpha=0.05),
    "CosineDecayRestarts-fractional": SCHEDULES.CosineDecayRestarts(
        0.3, 37, t_mul=1.5, m_mul=0.8, alpha=0.01
    ),
}

# Updates 0..300 and a few far ones. (Not where a rate is subnormal: TensorFlow
# flushes those to 0, NumPy keeps them; ExponentialDecay here is subnormal
# around update 2,800.)
UPDATES = np.concatenate([np.arange(301), [1000, 12345, 10**6, 2**31]]).astype(np.int64)


def serialized(schedule: Any) -> dict[str, Any]:
    """The schedule's config as the CLI reads it: through JSON."""
    config: dict[str, Any] = json.loads(json.dumps(SCHEDULES.serialize(schedule)))
    return config


def fast_rates(config: Any, updates: np.ndarray = UPDATES) -> np.ndarray:
    """What `introspect-opt plot` draws for a config it evaluates without Keras."""
    from introspect_opt_cli import _draw

    schedule = _cli.without_keras(config)
    assert schedule is not None, config
    return _draw.rates_at_updates(schedule, updates, accumulation=1)


def assert_close_to_keras(fast: np.ndarray, keras_rates: np.ndarray) -> None:
    """Equal to float32 rounding: rtol 1e-6 of the value, or of the peak rate near zero.

    Bit-exact for PiecewiseConstantDecay and InverseTimeDecay (only +, *, /
    and comparisons); pow, cos and log kernels round differently in NumPy,
    TensorFlow's vectorised kernels and JAX. Measured (Keras 3.15.1,
    TensorFlow 2.21, x86-64): at most 2 ulps of the peak rate apart, at up to
    a third of the steps (CosineDecayRestarts).
    """
    assert fast.dtype == keras_rates.dtype == np.float32
    peak = float(np.max(np.abs(keras_rates)))
    np.testing.assert_allclose(fast, keras_rates, rtol=1e-6, atol=1e-6 * peak)


def test_every_builtin_schedule_is_evaluated_without_keras() -> None:
    """Each class in keras.optimizers.schedules has a NumPy evaluator and configs tested here."""
    from introspect_opt_cli import _schedules

    builtin = {
        name
        for name, obj in vars(SCHEDULES).items()
        if isinstance(obj, type)
        and issubclass(obj, SCHEDULES.LearningRateSchedule)
        and obj is not SCHEDULES.LearningRateSchedule
    }
    assert set(_schedules.BUILTIN) == builtin
    assert {name.split("-")[0] for name in BUILTIN_CONFIGS} == builtin


@pytest.mark.parametrize("name", list(BUILTIN_CONFIGS))
def test_builtin_schedule_without_keras_equals_the_keras_path(name: str) -> None:
    """The NumPy values equal what the Keras path plots (preview_learning_rates), to rtol 1e-6."""
    schedule = BUILTIN_CONFIGS[name]
    config = serialized(schedule)
    assert _cli.without_keras(config).name == type(schedule).__name__  # the plot's title
    assert_close_to_keras(
        fast_rates(config), introspect_opt.preview_learning_rates(schedule, UPDATES)
    )


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="measured against TensorFlow's scalar kernels; other backends round pow and cos "
    "their own way (compared above, to rtol 1e-6)",
)
@pytest.mark.parametrize("name", list(BUILTIN_CONFIGS))
def test_builtin_schedule_without_keras_equals_per_step_calls(name: str) -> None:
    """Against `schedule(step)` one step at a time, as the update step calls it: bit-exact.

    NumPy's evaluator computes pow, cos and log in float64 and rounds once,
    which is what TensorFlow's scalar kernels return. Measured (Keras 3.15.1,
    TensorFlow 2.21, x86-64): 2 of 5,776 steps of these configs differ, by 1
    ulp; Keras's own vectorised values (what preview_learning_rates, and the
    CLI before, plot) differ from these per-step ones at up to 108 of 304.
    """
    schedule = BUILTIN_CONFIGS[name]
    raw = np.unique(np.maximum(UPDATES[::3] - 1, 0))
    fast = _cli.without_keras(serialized(schedule))(raw)
    per_step = np.array(
        [keras.ops.convert_to_numpy(schedule(keras.ops.convert_to_tensor(s))) for s in raw]
    )
    differ = fast != per_step
    assert differ.sum() <= 2, (name, raw[differ], fast[differ], per_step[differ])
    assert np.all(np.abs(fast.astype(np.float64) - per_step) <= np.spacing(per_step)), name


@pytest.mark.parametrize("name", ["PiecewiseConstantDecay", "InverseTimeDecay-staircase"])
def test_plot_without_keras_is_the_same_picture(name: str, tmp_path: Path) -> None:
    """Where the values are bit-exact, the CLI's PNG is plot_learning_rate's, pixel for pixel."""
    schedule = BUILTIN_CONFIGS[name]
    path = write_config(tmp_path, serialized(schedule))
    assert _cli.main(["plot", str(path), "-o", str(tmp_path / "cli.png"), "--steps", "60"]) == 0
    introspect_opt.plot_learning_rate(schedule, tmp_path / "api.png", iterations=60)
    np.testing.assert_array_equal(
        png_pixels(tmp_path / "cli.png"), png_pixels(tmp_path / "api.png")
    )


@pytest.mark.parametrize("multiplier", [0.5, 1.0])
def test_scaled_learning_rate_without_keras(multiplier: float) -> None:
    """introspect_opt.ScaledLearningRate's config (a schedule and a multiplier) is evaluated too."""
    schedule = introspect_opt.ScaledLearningRate(
        SCHEDULES.CosineDecay(0.0, 25, warmup_target=0.1, warmup_steps=8), multiplier
    )
    config = serialized(schedule)
    assert config["registered_name"] == "introspect_opt>ScaledLearningRate"
    assert _cli.without_keras(config).name == "ScaledLearningRate"
    assert_close_to_keras(
        fast_rates(config), introspect_opt.preview_learning_rates(schedule, UPDATES)
    )


def test_a_float_rate_without_keras() -> None:
    """A plain float rate is a float32 constant, as preview_learning_rates gives it."""
    from introspect_opt_cli import _schedules

    constant = _schedules.from_config(0.1)
    assert constant is not None
    np.testing.assert_array_equal(
        constant(UPDATES), introspect_opt.preview_learning_rates(0.1, UPDATES)
    )


def changed(config: dict[str, Any], **arguments: Any) -> dict[str, Any]:
    return {**config, "config": {**config["config"], **arguments}}


EXPONENTIAL = serialized(SCHEDULES.ExponentialDecay(0.1, 10, 0.5))


@pytest.mark.parametrize(
    "config",
    [
        # Keras computes an int initial rate in int32.
        pytest.param(changed(EXPONENTIAL, initial_learning_rate=1), id="int initial rate"),
        pytest.param(changed(EXPONENTIAL, initial_learning_rate="abc"), id="string"),
        pytest.param(changed(EXPONENTIAL, initial_learning_rate=1e39), id="float32 overflow"),
        pytest.param(changed(EXPONENTIAL, decay_rate=True), id="bool as a number"),
        pytest.param(changed(EXPONENTIAL, decay_steps=0), id="decay_steps 0"),
        pytest.param(changed(EXPONENTIAL, decay_step=10), id="unknown argument"),
        pytest.param(changed(EXPONENTIAL, staircase=1), id="staircase not a bool"),
        pytest.param(changed(EXPONENTIAL, name="a/b"), id="name Keras refuses"),
        pytest.param(
            {**EXPONENTIAL, "config": {"decay_steps": 10, "decay_rate": 0.5}}, id="missing argument"
        ),
        pytest.param({**EXPONENTIAL, "registered_name": "mine>ExponentialDecay"}, id="user class"),
        pytest.param({**EXPONENTIAL, "module": "my_schedules"}, id="other module"),
        pytest.param({**EXPONENTIAL, "class_name": "WarmupSchedule"}, id="unknown class"),
        pytest.param(
            serialized(SCHEDULES.PiecewiseConstantDecay([5.0], [0.1, 0.01])), id="float boundary"
        ),
        pytest.param(serialized(SCHEDULES.PiecewiseConstantDecay([5], [1, 0.01])), id="int value"),
        pytest.param(keras.optimizers.serialize(keras.optimizers.SGD(0.1)), id="optimizer"),
        # TensorFlow flushes float32 subnormals to zero; NumPy keeps them.
        pytest.param(changed(EXPONENTIAL, decay_steps=1e-45), id="subnormal decay_steps"),
        pytest.param(changed(EXPONENTIAL, decay_rate=1e-40), id="subnormal decay_rate"),
    ],
)
def test_configs_keras_must_evaluate(config: dict[str, Any]) -> None:
    """A config NumPy would not evaluate as Keras does is left to Keras."""
    from introspect_opt_cli import _schedules

    assert _schedules.from_config(json.loads(json.dumps(config))) is None


def test_a_keras_json_with_another_floatx_is_left_to_keras(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keras computes schedules in floatx on torch: a keras.json saying float64 goes to Keras."""
    config = serialized(BUILTIN_CONFIGS["CosineDecay"])
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert _cli.without_keras(config) is not None  # no keras.json there: float32
    (tmp_path / "keras.json").write_text(json.dumps({"floatx": "float64"}))
    assert _cli.without_keras(config) is None
    (tmp_path / "keras.json").write_text(json.dumps({"floatx": "float32", "backend": "jax"}))
    assert _cli.without_keras(config) is not None


@keras.saving.register_keras_serializable(package="introspect_opt_tests")
class HalvingSchedule(SCHEDULES.LearningRateSchedule):
    """A user's own schedule: halves the rate every `period` steps."""

    def __init__(self, rate: float, period: int) -> None:
        self.rate = rate
        self.period = period

    def __call__(self, step: Any) -> Any:
        halvings = keras.ops.floor(keras.ops.cast(step, "float32") / self.period)
        return self.rate * keras.ops.power(0.5, halvings)

    def get_config(self) -> dict[str, Any]:
        return {"rate": self.rate, "period": self.period}


def test_a_custom_schedule_config_is_plotted_through_keras(tmp_path: Path) -> None:
    """A class NumPy does not know (here registered in this process) is built and drawn by Keras."""
    schedule = HalvingSchedule(0.1, 50)
    config = serialized(schedule)
    assert _cli.without_keras(config) is None
    path = write_config(tmp_path, config)
    assert _cli.main(["plot", str(path), "-o", str(tmp_path / "cli.png"), "--steps", "300"]) == 0
    introspect_opt.plot_learning_rate(schedule, tmp_path / "api.png", iterations=300)
    np.testing.assert_array_equal(
        png_pixels(tmp_path / "cli.png"), png_pixels(tmp_path / "api.png")
    )


def test_plot_without_matplotlib_says_how_to_install_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without matplotlib: status 2, one line naming the package and the extra."""
    path = write_config(tmp_path, serialized(BUILTIN_CONFIGS["CosineDecay"]))
    for module in [m for m in sys.modules if m.startswith("matplotlib")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    assert _cli.main(["plot", str(path), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err == (
        "introspect-opt: error: ImportError: introspect-opt plot needs matplotlib, an optional "
        "dependency of introspect-opt: `pip install matplotlib` (or, from a checkout of "
        'introspect-opt, `pip install ".[plot]"`).\n'
    )


# What `introspect-opt plot schedule.json` must not import: no Keras, no backend,
# nothing of introspect_opt (whose __init__ imports Keras).
NOT_FOR_A_SCHEDULE_CONFIG = {"keras", "tensorflow", "jax", "torch", "introspect_opt"}


@in_subprocess
def test_plot_of_a_schedule_config_imports_neither_keras_nor_a_backend(tmp_path: Path) -> None:
    """`introspect-opt plot schedule.json -o x.png`, as a user runs it: NumPy and matplotlib only.

    benchmarks/cli_plot.py times it against the Keras path.
    """
    config = tmp_path / "schedule.json"
    config.write_text(json.dumps(serialized(SCHEDULE)))
    out = tmp_path / "x.png"
    start = time.perf_counter()
    modules, done = imports_of(*console_script("plot", str(config), "-o", str(out)))
    print(f"introspect-opt plot schedule.json: {time.perf_counter() - start:.2f} s (-X importtime)")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == f"{out}\n"
    assert done.stderr == ""
    assert_real_plot(out)
    assert {m for m in modules if m.split(".")[0] in NOT_FOR_A_SCHEDULE_CONFIG} == set()
    assert {
        "numpy",
        "matplotlib",
        "introspect_opt_cli._schedules",
        "introspect_opt_cli._draw",
    } <= modules
