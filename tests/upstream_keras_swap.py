"""A pytest plugin that runs Keras's own optimizer tests with our classes.

Loaded only in the subprocess ``tests/test_upstream_keras.py`` starts
(``python -m pytest -p upstream_keras_swap <keras>/src/optimizers/*_test.py``),
never in the main test process: it rebinds Keras's optimizer names for the
whole interpreter.

Before any upstream test module is imported, every optimizer class Keras
exports is replaced by its twin ``introspect_opt.introspectable(<Name>)``
wherever a ``keras*`` module binds it (``keras.optimizers.<Name>``,
``keras.src.optimizers.<Name>``, ``keras.src.optimizers.<module>.<Name>``), in
the ``optimizers.get`` / ``deserialize`` table and in Keras's export registry
(configs naming ``"module": "keras.optimizers"``). So ``from
keras.src.optimizers.sgd import SGD``, ``optimizers.SGD(...)`` and
``optimizers.get("sgd")`` in the upstream tests all give ``IntrospectableSGD``.
Once the test modules are imported, each class goes back to the module that
defines it (pickle finds classes there; see ``_restore_defining_modules``).

The plugin also does what Keras's own ``conftest.py`` does (the wheel does not
ship it), counts which optimizers each test created and applied, and by what
class, and writes a JSON report to the path in
``$INTROSPECT_OPT_UPSTREAM_REPORT``.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Generator
from typing import Any

# As in Keras's conftest.py, JAX's x64 tests keep 32-bit default dtypes. (Its
# conftest also imports torch before TensorFlow, which can segfault the other
# way round; here only the backend in use is imported, so that costs 4 s for
# nothing.)
os.environ.setdefault("JAX_DEFAULT_DTYPE_BITS", "32")

import keras
import pytest
from keras.src import api_export
from keras.src import optimizers as src_optimizers
from keras.src.optimizers import base_optimizer

import introspect_opt

# The wrappers and the abstract base apply no updates themselves: they stay
# Keras's (introspectable() refuses them), and wrap our twins in the tests.
_NOT_SWAPPED = {"Optimizer", "LossScaleOptimizer", "MultiOptimizer", "OptimizerMap"}


def _keras_optimizer_classes() -> dict[type, type]:
    """Every optimizer class ``keras.optimizers`` exports -> its twin."""
    swaps: dict[type, type] = {}
    for name, value in vars(keras.optimizers).items():
        if name in _NOT_SWAPPED or not isinstance(value, type):
            continue
        if not issubclass(value, keras.optimizers.Optimizer):
            continue
        twin = introspect_opt.introspectable(value)
        # The exported ready-made class, not a second twin of the same base.
        assert twin is getattr(introspect_opt, f"Introspectable{name}"), name
        swaps[value] = twin
    return swaps


SWAPS = _keras_optimizer_classes()
TWINS = frozenset(SWAPS.values())


def _swap_module_attributes() -> list[str]:
    """Rebinds every ``keras*`` module attribute that names a swapped class."""
    rebound = []
    for module_name, module in list(sys.modules.items()):
        if module is None or module_name.split(".")[0] != "keras":
            continue
        for attribute, value in list(vars(module).items()):
            if isinstance(value, type) and value in SWAPS:
                setattr(module, attribute, SWAPS[value])
                rebound.append(f"{module_name}.{attribute}")
    # `optimizers.get("adam")` and `optimizers.deserialize(...)` look classes up here.
    for key, value in list(src_optimizers.ALL_OBJECTS_DICT.items()):
        if value in SWAPS:
            src_optimizers.ALL_OBJECTS_DICT[key] = SWAPS[value]
    for value in [v for v in src_optimizers.ALL_OBJECTS if v in SWAPS]:
        src_optimizers.ALL_OBJECTS.discard(value)
        src_optimizers.ALL_OBJECTS.add(SWAPS[value])
    # Configs that name a class by its public path ("module": "keras.optimizers",
    # "class_name": "SGD") are resolved through Keras's export registry.
    for name, value in list(api_export.REGISTERED_NAMES_TO_OBJS.items()):
        if isinstance(value, type) and value in SWAPS:
            api_export.REGISTERED_NAMES_TO_OBJS[name] = SWAPS[value]
            rebound.append(f"api_export:{name}")
    return rebound


def _restore_defining_modules() -> None:
    """Gives each class back to the module that defines it, once the tests are imported.

    The test modules hold the twins by then (``from keras.src.optimizers.sgd
    import SGD`` ran with the swap in place). Pickle finds a class by its
    defining module and name, and the twins pickle by reference to their
    Keras base (``IntrospectableOptimizer.__reduce__``), as they must outside
    this run, where nobody rebinds ``keras.src.optimizers.sgd.SGD``.
    """
    for original in SWAPS:
        setattr(sys.modules[original.__module__], original.__name__, original)


def _keep_torch_fused_lookup() -> None:
    """On torch, lets the twins be created after their names were rebound.

    ``TorchOptimizer.__new__`` maps ``keras.src.optimizers.<Name>`` to its fused
    ``torch._foreach_*`` class, reading those names at every call. With the
    names rebound it would map each twin to Keras's plain fused class (and skip
    the twin's ``__init__``). Twins already extend the fused class, so they are
    created as themselves, as they are without the swap.
    """
    if keras.backend.backend() != "torch":
        return
    from keras.src.backend.torch.optimizers import torch_optimizer

    base = torch_optimizer.TorchOptimizer
    keras_new = base.__new__

    def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:
        if cls in TWINS:
            return super(base, cls).__new__(cls)  # type: ignore[misc]
        return keras_new(cls, *args, **kwargs)

    base.__new__ = __new__  # type: ignore[method-assign]


REBOUND = _swap_module_attributes()
_keep_torch_fused_lookup()

# What the running test did with optimizers: "created:<kind>" and
# "applied:<kind>" (apply / stateless_apply calls), kind being "twin", "plain"
# (a built-in Keras class, which the swap should have replaced) or "other"
# (wrappers such as LossScaleOptimizer, optimizers the test defines).
_events: Counter[str] = Counter()


def _kind(optimizer: Any) -> str:
    if isinstance(optimizer, introspect_opt.IntrospectableOptimizer):
        return "twin"
    cls = type(optimizer)
    if cls in SWAPS or cls.__module__.startswith("keras.src.backend."):
        return "plain"  # (the fused torch variants live in keras.src.backend)
    return "other"


def _counting(event: str, method: Any) -> Any:
    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        kind = _kind(self)
        if kind == "plain":  # which class, and which name, for the report
            name = kwargs.get("name") if event == "created" else self.name
            kind = f"plain:{type(self).__name__}:{name}"
        _events[f"{event}:{kind}"] += 1
        return method(self, *args, **kwargs)

    return counted


_BASE = base_optimizer.BaseOptimizer
_BASE.__init__ = _counting("created", _BASE.__init__)  # type: ignore[method-assign]
_BASE.apply = _counting("applied", _BASE.apply)  # type: ignore[method-assign]
_BASE.stateless_apply = _counting("applied", _BASE.stateless_apply)  # type: ignore[method-assign]

_results: dict[str, dict[str, Any]] = {}
_started = [0.0]


def _cpu_seconds() -> float:
    """This process's CPU time (all threads): a cost that shared CI cores do not inflate."""
    times = os.times()
    return times.user + times.system


_collection_errors: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Registers the marker Keras's conftest.py registers."""
    config.addinivalue_line(
        "markers", "requires_trainable_backend: mark test for trainable backend only"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skips what Keras's conftest.py skips, and checks the swap reached every test module."""
    trainable = pytest.mark.skipif(
        keras.backend.backend() in ("numpy", "openvino"),
        reason="Trainer not implemented for NumPy and OpenVINO backend.",
    )
    for item in items:
        if "requires_trainable_backend" in item.keywords:
            item.add_marker(trainable)
    for module in {item.module for item in items if isinstance(item, pytest.Function)}:
        for attribute, value in vars(module).items():
            if isinstance(value, type) and value in SWAPS:
                _collection_errors[module.__name__] = (
                    f"{module.__name__}.{attribute} is Keras's class, not the twin"
                )


def pytest_collection_finish(session: pytest.Session) -> None:
    """Restores the defining modules (see ``_restore_defining_modules``)."""
    _restore_defining_modules()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Starts counting the optimizers this test creates."""
    _events.clear()
    _started[0] = _cpu_seconds()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[Any]:
    """Records each test's outcome and the optimizers it created."""
    outcome = yield
    report = outcome.get_result()
    # "sgd_test.py::SGDTest::test_config", wherever the file lies.
    node = "::".join([item.path.name, *report.nodeid.split("::")[1:]])
    result = _results.setdefault(node, {"outcome": "passed", "events": {}, "message": ""})
    if report.failed:
        result["outcome"] = "failed"
        result["message"] = str(report.longrepr)[-3000:]
    elif report.skipped and result["outcome"] != "failed":
        result["outcome"] = "skipped"
        result["message"] = str(report.longrepr)[-300:]
    if report.when == "teardown":
        result["events"] = dict(_events)
        result["cpu_s"] = round(_cpu_seconds() - _started[0], 3)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """Records modules that failed to import."""
    if report.failed:
        _collection_errors[report.nodeid] = str(report.longrepr)[-3000:]


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Writes the JSON report."""
    path = os.environ.get("INTROSPECT_OPT_UPSTREAM_REPORT")
    if not path:
        return
    report = {
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "swapped": sorted(f"{c.__name__}->{t.__name__}" for c, t in SWAPS.items()),
        "rebound": REBOUND,
        "collection_errors": _collection_errors,
        "tests": _results,
    }
    with open(path, "w", encoding="utf-8") as file:
        json.dump(report, file, indent=1, sort_keys=True)
