"""The command line: ``python -m introspect_opt plot`` / ``introspect-opt plot``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import make_data, make_model

import introspect_opt
from introspect_opt import _cli

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


@in_subprocess
def test_plot_of_a_saved_model_in_a_subprocess(files: dict[str, Path], tmp_path: Path) -> None:
    """`python -m introspect_opt plot m.keras -o out.png` writes the plot, prints its path."""
    out = tmp_path / "model.png"
    done = run_cli("plot", str(files["trained"]), "-o", str(out), "--steps", "200")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == str(out)
    assert_real_plot(out)


@in_subprocess
def test_plot_of_a_schedule_json_in_a_subprocess(files: dict[str, Path], tmp_path: Path) -> None:
    """A schedule config written by keras.optimizers.schedules.serialize plots the same way."""
    out = tmp_path / "schedule.png"
    done = run_cli("plot", str(files["schedule"]), "-o", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
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


def test_console_script_points_at_main() -> None:
    """The `introspect-opt` script in pyproject.toml resolves to the same main()."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    scripts = re.search(r"^\[project\.scripts\]\n(.*?)\n\n", pyproject, re.MULTILINE | re.DOTALL)
    assert scripts is not None
    target = re.search(r'^introspect-opt = "(.+)"$', scripts.group(1), re.MULTILINE)
    assert target is not None
    module, _, name = target.group(1).partition(":")
    assert (module, name) == ("introspect_opt._cli", "main")
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
