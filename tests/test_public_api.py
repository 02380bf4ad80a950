"""The public surface: names, signatures, registration, documentation."""

from __future__ import annotations

import copy
import doctest
import importlib.resources
import inspect
import re
from pathlib import Path

import keras
import pytest

import introspect_opt
from introspect_opt._keras3 import mixin as _mixin

ROOT = Path(__file__).resolve().parents[1]


def test_all_lists_exactly_the_public_names() -> None:
    """__all__ matches what the package exports without an underscore."""
    public = {name for name in vars(introspect_opt) if not name.startswith("_")}
    assert set(introspect_opt.__all__) == public - {"annotations"}
    assert "tf_keras" not in public or introspect_opt.tf_keras.__name__ == "introspect_opt.tf_keras"
    assert introspect_opt.__all__ == sorted(introspect_opt.__all__)


def test_constructor_is_exactly_sgds() -> None:
    """IntrospectableSGD takes exactly SGD's arguments, with SGD's defaults."""
    assert inspect.signature(introspect_opt.IntrospectableSGD) == inspect.signature(
        keras.optimizers.SGD
    )


def test_registered_for_keras_serialization() -> None:
    """Configs name the class under the package name."""
    cls = introspect_opt.IntrospectableSGD
    assert keras.saving.get_registered_name(cls) == "introspect_opt>IntrospectableSGD"
    assert keras.saving.get_registered_object("introspect_opt>IntrospectableSGD") is cls


def test_config_round_trip() -> None:
    """get_config / from_config reproduce the optimizer, schedule included."""
    schedule = keras.optimizers.schedules.CosineDecay(0.1, 100, warmup_target=0.2, warmup_steps=5)
    optimizer = introspect_opt.IntrospectableSGD(
        schedule,
        momentum=0.9,
        nesterov=True,
        weight_decay=1e-4,
        global_clipnorm=1.0,
        use_ema=True,
        ema_momentum=0.95,
        ema_overwrite_frequency=10,
        loss_scale_factor=2.0,
        gradient_accumulation_steps=2,
        name="mine",
    )
    config = optimizer.get_config()
    clone = introspect_opt.IntrospectableSGD.from_config(copy.deepcopy(config))
    assert clone.get_config() == config
    serialized = keras.optimizers.serialize(optimizer)
    assert type(keras.optimizers.deserialize(serialized)) is introspect_opt.IntrospectableSGD


def test_py_typed_is_shipped() -> None:
    """The package marks itself as typed."""
    assert importlib.resources.files("introspect_opt").joinpath("py.typed").is_file()


@pytest.mark.parametrize(
    "obj",
    [getattr(introspect_opt, name) for name in introspect_opt.__all__]
    + [_mixin.IntrospectableOptimizer],
    ids=lambda o: o.__name__,
)
def test_docstring_examples_run(obj: object) -> None:
    """Every Example in the public docstrings runs and prints what it says."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    # Only the object's own docstring and its members defined here, not the
    # Keras base classes' docstrings.
    tests = [
        t
        for t in finder.find(obj, name=obj.__name__, globs={})
        if t.examples and (t.name == obj.__name__ or "current_learning_rate" in t.name)
    ]
    assert tests
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0


def test_every_public_name_has_an_example_and_an_api_entry() -> None:
    """Docstrings carry a runnable Example; docs/api.md renders each name with mkdocstrings."""
    api = (ROOT / "docs" / "api.md").read_text()
    entries = re.findall(r"^::: introspect_opt\.(\w+)$", api, re.MULTILINE)
    assert sorted(entries) == sorted(set(entries)), "a name is rendered twice"
    assert set(entries) == set(introspect_opt.__all__)
    for name in introspect_opt.__all__:
        obj = getattr(introspect_opt, name)
        # A Google-style "Examples:" section, indented: mkdocstrings renders it
        # as code; anything else turns the ">>>" lines into nested block quotes.
        assert re.search(r"^( *)Examples:\n\1    >>> ", obj.__doc__ or "", re.MULTILINE), name
    assert ">>> " in (_mixin.IntrospectableOptimizer.current_learning_rate.__doc__ or "")
