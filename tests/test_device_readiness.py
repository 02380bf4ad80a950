"""GPU and TPU readiness: the traced train step holds nothing host-only, and a ``gpu`` suite.

Without the hardware, readiness is checked on the graphs themselves: every op
of ``fit``'s train function and of a custom ``tf.function`` step (nested
library functions included) is inspected for host-only or string ops, and the
step is run with soft device placement off, so that an op without a kernel for
the requested device fails instead of silently moving to the host. Tests
marked ``gpu`` run the core paths on ``/gpu:0``; ``pytest -m gpu`` selects them
and the conftest skips them, with a reason, where no GPU is visible.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import SCHEDULE, Witness, bits, make_data, make_model, schedule_value, weights_of
from tensorflow.core.framework import types_pb2
from tensorflow.python.framework import op_def_registry
from test_distributed import mirrored_strategy

import introspect_opt
from introspect_opt import IntrospectableSGD
from introspect_opt._keras3.dormant import GATE_NAME

pytestmark = pytest.mark.tf_only

# Op types that run Python or format strings on the host: no GPU kernels, not
# compilable by XLA, unsupported on TPU. Any other op that takes or returns a
# string tensor is refused too (see _string_typed).
HOST_ONLY_OPS = frozenset(
    {
        "PyFunc",
        "PyFuncStateless",
        "EagerPyFunc",
        "Print",
        "PrintV2",
        "Assert",
        "StringFormat",
        "AsString",
        "StringJoin",
        "StringLength",
        "StringSplitV2",
        "StringToNumber",
        "Substr",
        "RegexReplace",
        "StaticRegexReplace",
        "ReduceJoin",
        "WriteScalarSummary",
        "WriteSummary",
        "ScalarSummary",
    }
)
_CALL_OPS = {"StatefulPartitionedCall": ("f",), "PartitionedCall": ("f",)}
_LOOP_OPS = {"While": ("body", "cond"), "StatelessWhile": ("body", "cond")}
_BRANCH_OPS = {"If": ("then_branch", "else_branch"), "StatelessIf": ("then_branch", "else_branch")}
_WRITE_OPS = {"AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp"}
# What a dormant feature's gate adds to a step: its variable's size (a shape
# read, on the host), compared with 0, and the tf.cond.
DORMANT_GATE_OPS = frozenset({"Size", "Greater", "If"})


def _string_typed(node: Any) -> bool:
    """Whether a node takes or returns a string tensor, from its OpDef and type attrs."""
    op_def = op_def_registry.get(node.op)
    if op_def is None:
        return False
    for arg in [*op_def.input_arg, *op_def.output_arg]:
        if arg.type == types_pb2.DT_STRING:
            return True
        for attr in (arg.type_attr, arg.type_list_attr):
            if attr and attr in node.attr:
                value = node.attr[attr]
                if value.type == types_pb2.DT_STRING or types_pb2.DT_STRING in value.list.type:
                    return True
    return False


class _GraphReport:
    """Every op of a concrete function, nested functions included, and what it writes.

    The branch that a dormant feature's gate (``_dormant.when_on``) takes once
    the feature is switched on is reported apart (``gated_*``): a dormant
    feature's step runs its other branch, which does nothing.
    """

    def __init__(self, concrete: Any) -> None:
        graph_def = concrete.graph.as_graph_def()
        self.library = {f.signature.name: f for f in graph_def.library.function}
        self.op_types: set[str] = set()
        self.gated_op_types: set[str] = set()
        self.string_ops: set[str] = set()
        # Variable handle ids (captured by the outer graph) that some op assigns.
        self.written: set[int] = set()
        self.gated_written: set[int] = set()
        self.assign_count = 0
        self.gated_assign_count = 0
        captured = {inner.op.name: id(outer) for outer, inner in concrete.graph.captures}
        self._walk(list(graph_def.node), captured, set())

    def _walk(
        self, nodes: list[Any], resources: dict[str, int], seen: set[str], gated: bool = False
    ) -> None:
        def resolve(name: str) -> int | None:
            return resources.get(name.split(":")[0])

        for node in nodes:
            (self.gated_op_types if gated else self.op_types).add(node.op)
            if _string_typed(node):
                self.string_ops.add(node.op)
            inputs = [i for i in node.input if not i.startswith("^")]
            if node.op in _WRITE_OPS:
                target = resolve(inputs[0])
                if gated:
                    self.gated_assign_count += 1
                else:
                    self.assign_count += 1
                if target is not None:
                    (self.gated_written if gated else self.written).add(target)
            elif node.op == "Identity" and inputs and resolve(inputs[0]) is not None:
                resources[node.name] = resolve(inputs[0])  # type: ignore[assignment]
            callees: list[tuple[str, list[str], bool]] = []
            if node.op in _CALL_OPS or node.op in _LOOP_OPS:
                for attr in (_CALL_OPS | _LOOP_OPS)[node.op]:
                    callees.append((node.attr[attr].func.name, inputs, gated))
            elif node.op in _BRANCH_OPS:
                gate = GATE_NAME in node.name
                for attr in _BRANCH_OPS[node.op]:
                    on_branch = gate and attr == "then_branch"
                    callees.append((node.attr[attr].func.name, inputs[1:], gated or on_branch))
            elif node.op in self.library:
                callees.append((node.op, inputs, gated))
            for name, args, in_gate in callees:
                function = self.library[name]
                inner = {
                    arg.name: resolve(value)
                    for arg, value in zip(function.signature.input_arg, args, strict=False)
                    if resolve(value) is not None
                }
                key = f"{name}:{in_gate}:{sorted(inner.items())}"
                if key not in seen:
                    seen.add(key)
                    self._walk(list(function.node_def), inner, seen, in_gate)  # type: ignore[arg-type]


def _handles(variable: Any) -> set[int]:
    """Ids of the resource handles behind a variable (one per replica)."""
    value = variable.value if isinstance(variable, keras.Variable) else variable
    components = getattr(value, "values", (value,))
    return {id(component.handle) for component in components}


def _assert_device_ready(report: _GraphReport, optimizer: Any) -> None:
    # XLA and TPUs compile both branches of a gate: the gated ones count too.
    every = report.op_types | report.gated_op_types
    assert not every & HOST_ONLY_OPS, sorted(every & HOST_ONLY_OPS)
    assert not report.string_ops, sorted(report.string_ops)
    # Not vacuous: the walk reached the update, and the update writes the cache.
    state = optimizer._introspection_state
    for variable in (state.applied_learning_rate, state.update_count):
        assert _handles(variable) <= report.written, variable.path


def _train_function(model: Any) -> Any:
    """The tf.function Keras's fit calls once per execution (steps_per_execution steps)."""
    function = model.train_function
    cells = dict(zip(function.__code__.co_freevars, function.__closure__ or (), strict=True))
    # Keras 3.15: make_train_function wraps `multi_step_on_iterator`, a tf.function.
    assert "multi_step_on_iterator" in cells, "Keras changed make_train_function"
    traced = cells["multi_step_on_iterator"].cell_contents._list_all_concrete_functions()
    assert len(traced) == 1
    return traced[0]


def _fit_graph(
    optimizer_class: type,
    jit_compile: Any,
    steps_per_execution: int,
    replicas: int,
    opt_in: Any = None,
) -> Any:
    keras.backend.clear_session(free_memory=False)
    strategy = mirrored_strategy(replicas) if replicas > 1 else tf.distribute.get_strategy()
    with strategy.scope():
        model = make_model()
        optimizer = optimizer_class(SCHEDULE, momentum=0.9)
        if opt_in is not None:
            opt_in(optimizer)
        model.compile(
            optimizer,
            loss="mse",
            jit_compile=jit_compile,
            steps_per_execution=steps_per_execution,
        )
    x, y = make_data(16 * replicas)
    model.fit(x, y, batch_size=8 * replicas, epochs=1, verbose=0)
    return model, _GraphReport(_train_function(model))


@pytest.mark.parametrize(
    ("jit_compile", "steps_per_execution", "replicas"),
    [(False, 1, 1), (True, 1, 1), (False, 2, 1), (False, 1, 2)],
)
def test_fit_train_function_is_device_ready(
    jit_compile: Any, steps_per_execution: int, replicas: int
) -> None:
    """The step fit traces: no host-only or string op, no op type plain SGD lacks, cache written.

    Besides, only the gates of the dormant features (see ``_dormant``): the
    size of a dormant variable, compared with 0, picks a branch that does
    nothing; the branch that writes a feature runs once one is switched on.
    """
    model, ours = _fit_graph(IntrospectableSGD, jit_compile, steps_per_execution, replicas)
    _, plain = _fit_graph(keras.optimizers.SGD, jit_compile, steps_per_execution, replicas)
    _assert_device_ready(ours, model.optimizer)
    extra = ours.op_types - plain.op_types
    assert extra <= DORMANT_GATE_OPS, sorted(extra - DORMANT_GATE_OPS)
    assert ours.assign_count == plain.assign_count + 2 * replicas  # rate and count, per replica
    # Not vacuous: the dormant rate history is written, but only behind its gate.
    state = model.optimizer._introspection_state
    history = set().union(*(_handles(v) for v in (state.rate_history, state.rate_history_updates)))
    assert history <= ours.gated_written
    assert not history & ours.written
    assert introspect_opt.rate_history(model)[0].size == 0  # and stays dormant


@pytest.mark.parametrize(
    ("opt_in", "jit_compile", "replicas"),
    [
        (lambda optimizer: introspect_opt.keep_rate_history(optimizer, 8), True, 1),
        (introspect_opt.record_diagnostics, True, 1),
        (lambda optimizer: introspect_opt.keep_rate_history(optimizer, 8), False, 2),
        (introspect_opt.record_diagnostics, False, 2),
    ],
    ids=["history-xla", "diagnostics-xla", "history-mirrored", "diagnostics-mirrored"],
)
def test_opt_in_extras_are_device_ready(opt_in: Any, jit_compile: bool, replicas: int) -> None:
    """Rate history and diagnostics add no host-only or string op to fit's step."""
    model, report = _fit_graph(IntrospectableSGD, jit_compile, 1, replicas, opt_in)
    _assert_device_ready(report, model.optimizer)
    state = model.optimizer._introspection_state
    # The extra's own state is written in the step (the rate history behind
    # its dormant gate, see _dormant; diagnostics unconditionally).
    names = ("rate_history", "rate_history_updates", *introspect_opt._features.diagnostics.KEYS)
    own = [getattr(state, name) for name in names if getattr(state, name) is not None]
    written = report.written | report.gated_written
    assert own
    assert set().union(*(_handles(v) for v in own)) <= written


@pytest.mark.parametrize("jit_compile", [False, True])
def test_custom_loop_step_is_device_ready(jit_compile: bool) -> None:
    """A custom tf.function step: no host-only or string op, the cache written."""
    model = make_model()
    optimizer = IntrospectableSGD(SCHEDULE, momentum=0.9)
    optimizer.build(model.trainable_variables)

    @tf.function(jit_compile=jit_compile)
    def step(x: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x) - y))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return optimizer.current_learning_rate

    x, y = make_data(8)
    report = _GraphReport(step.get_concrete_function(x, y))
    _assert_device_ready(report, optimizer)
    assert "ReadVariableOp" in report.op_types
    assert float(step(x, y)) == pytest.approx(float(schedule_value(SCHEDULE, 0)))


@pytest.fixture
def hard_device_placement() -> Iterator[None]:
    """Soft device placement off for one test: an op without a kernel there fails."""
    previous = tf.config.get_soft_device_placement()
    tf.config.set_soft_device_placement(False)
    try:
        yield
    finally:
        tf.config.set_soft_device_placement(previous)


def _fit_with_witness(
    x: Any, y: Any, jit_compile: Any = False
) -> tuple[Any, list[tuple[int, int]]]:
    """Trains with Witness, recording (current_learning_rate bits, witnessed bits) per batch."""
    model = make_model()
    model.compile(Witness(SCHEDULE, momentum=0.9), loss="mse", jit_compile=jit_compile)
    rows: list[tuple[int, int]] = []
    probe = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: rows.append(
            (bits(model.optimizer.current_learning_rate), bits(model.optimizer.witness.numpy()))
        )
    )
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[probe])
    return model, rows


@pytest.mark.usefixtures("hard_device_placement")
def test_training_with_soft_placement_off_on_one_device() -> None:
    """Soft placement off, under tf.device('/cpu:1'): fit and a custom step run there."""
    assert not tf.config.get_soft_device_placement()
    x, y = make_data(32)
    with tf.device("/cpu:1"):
        model, rows = _fit_with_witness(x, y)
        optimizer = model.optimizer

        @tf.function
        def step(xb: Any, yb: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(xb) - yb))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return optimizer.current_learning_rate

        applied = step(x[:8], y[:8])
    assert len(rows) == 4 and all(current == witnessed for current, witnessed in rows)
    assert bits(applied) == bits(optimizer.witness.numpy()) == bits(optimizer.current_learning_rate)
    assert optimizer._introspection_state.applied_learning_rate.value.device.endswith("CPU:1")


@pytest.mark.usefixtures("hard_device_placement")
def test_training_with_soft_placement_off_under_mirrored_strategy() -> None:
    """Soft placement off, MirroredStrategy over two CPUs: fit runs, the rate is the applied one."""
    x, y = make_data(32)
    with mirrored_strategy(2).scope():
        model = make_model()
        model.compile(Witness(SCHEDULE, momentum=0.9), loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 4
    assert bits(model.optimizer.current_learning_rate) == bits(model.optimizer.witness.numpy())


# --- The core suite on a GPU: `pytest -m gpu` --------------------------------

GPU = "/gpu:0"


@contextlib.contextmanager
def _deterministic_ops(enabled: bool = True) -> Iterator[None]:
    """Deterministic GPU kernels, so that two runs can be compared bit for bit."""
    from tensorflow.python.framework import config

    was_enabled = config.is_op_determinism_enabled()
    if enabled:
        tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if enabled and not was_enabled:
            config.disable_op_determinism()


@pytest.fixture
def deterministic_gpu_ops() -> Iterator[None]:
    """Deterministic GPU kernels for one test."""
    with _deterministic_ops():
        yield


@pytest.mark.gpu
@pytest.mark.usefixtures("hard_device_placement")
@pytest.mark.parametrize("jit_compile", [False, True])
def test_gpu_fit(jit_compile: bool) -> None:
    """Fit on /gpu:0 with soft placement off: cache on the GPU, exact rate, weights as plain SGD."""
    x, y = make_data(32)
    # Keras turns XLA off in fit while op determinism is on; XLA's own GPU
    # kernels are not guaranteed deterministic, hence the tolerance below.
    with tf.device(GPU), _deterministic_ops(enabled=not jit_compile):
        model, rows = _fit_with_witness(x, y, jit_compile=jit_compile)
        plain = make_model()
        plain.compile(
            keras.optimizers.SGD(SCHEDULE, momentum=0.9), loss="mse", jit_compile=jit_compile
        )
        plain.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert model.jit_compile is jit_compile and plain.jit_compile is jit_compile
    assert "GPU:0" in model.optimizer._introspection_state.applied_learning_rate.value.device
    assert len(rows) == 4 and all(current == witnessed for current, witnessed in rows)
    assert np.int32(rows[-1][0]).view(np.float32) == pytest.approx(
        float(schedule_value(SCHEDULE, 3)), rel=1e-6
    )
    for ours, theirs in zip(weights_of(model), weights_of(plain), strict=True):
        if jit_compile:
            np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
        else:
            np.testing.assert_array_equal(ours, theirs)


@pytest.mark.gpu
@pytest.mark.usefixtures("hard_device_placement", "deterministic_gpu_ops")
@pytest.mark.parametrize("jit_compile", [False, True])
def test_gpu_custom_loop(jit_compile: bool) -> None:
    """A custom tf.function step on /gpu:0: returns the applied rate, weights as plain SGD."""
    x, y = make_data(8)
    results = {}
    for optimizer_class in (keras.optimizers.SGD, Witness):
        with tf.device(GPU):
            model = make_model()
            optimizer = optimizer_class(SCHEDULE, momentum=0.9)
            optimizer.build(model.trainable_variables)
            introspectable = optimizer_class is Witness

            @tf.function(jit_compile=jit_compile)
            def step(xb: Any, yb: Any) -> Any:
                with tf.GradientTape() as tape:
                    loss = tf.reduce_mean(tf.square(model(xb) - yb))  # noqa: B023
                grads = tape.gradient(loss, model.trainable_variables)  # noqa: B023
                optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))  # noqa: B023
                return optimizer.current_learning_rate if introspectable else tf.constant(0.0)  # noqa: B023

            applied = [bits(step(x, y)) for _ in range(3)]
        results[optimizer_class] = (model, optimizer, applied)
    model, optimizer, applied = results[Witness]
    assert applied[-1] == bits(optimizer.witness.numpy()) == bits(optimizer.current_learning_rate)
    assert float(optimizer.current_learning_rate) == pytest.approx(
        float(schedule_value(SCHEDULE, 2))
    )
    for ours, theirs in zip(
        weights_of(model), weights_of(results[keras.optimizers.SGD][0]), strict=True
    ):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.gpu
@pytest.mark.usefixtures("hard_device_placement", "deterministic_gpu_ops")
def test_gpu_mirrored_strategy_fit() -> None:
    """MirroredStrategy over every visible GPU: the applied rate, weights as plain SGD."""
    gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    x, y = make_data(64)
    weights = []
    for optimizer_class in (keras.optimizers.SGD, Witness):
        keras.backend.clear_session(free_memory=False)
        with mirrored_strategy(len(gpus), devices=gpus).scope():
            model = make_model()
            model.compile(optimizer_class(SCHEDULE, momentum=0.9), loss="mse", jit_compile=False)
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        weights.append(weights_of(model))
    assert int(model.optimizer.iterations.numpy()) == 4
    assert bits(model.optimizer.current_learning_rate) == bits(model.optimizer.witness.numpy())
    for ours, theirs in zip(weights[1], weights[0], strict=True):
        np.testing.assert_array_equal(ours, theirs)
