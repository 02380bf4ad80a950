"""Every tf_keras optimizer: the ready-made classes, and bit-identical updates."""

from __future__ import annotations

import copy
import inspect
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tfk_helpers import (
    FLOAT_ONLY,
    SCHEDULE,
    array_bits,
    bits,
    exported_optimizers,
    make_data,
    make_model,
    plain_variables,
    rate_for,
)

import introspect_opt
from introspect_opt import tf_keras as itk
from introspect_opt._tf_keras.factory import ready_made
from introspect_opt._tf_keras.mechanism import NewIntrospectionMixin

EXPORTED = exported_optimizers()


def test_a_ready_made_class_exists_for_every_exported_optimizer() -> None:
    """The table of ready-made classes is exactly what the installed tf_keras exports."""
    assert len(EXPORTED) == 19, sorted(EXPORTED)
    ready_made = {name for name in itk.__all__ if name.startswith("Introspectable")}
    missing = sorted(set(EXPORTED) - ready_made)
    assert not missing, "\n".join(
        f"{EXPORTED[name].__module__}.{EXPORTED[name].__name__} has no ready-made class. Add "
        "this line to the table in introspect_opt/_tf_keras/optimizers.py (the one place to "
        f"edit): class {name}("
        f"{'_LegacyMixin, _legacy' if 'Legacy' in name else '_NewMixin, _new'}."
        f"{EXPORTED[name].__name__}): ..."
        for name in missing
    )
    assert ready_made == set(EXPORTED)
    for name, base in EXPORTED.items():
        cls = getattr(itk, name)
        assert cls.__bases__[1] is base and itk.introspectable(base) is cls
        assert cls.__module__ == "introspect_opt.tf_keras"
        # Under TF_USE_LEGACY_KERAS=1 the top-level names are these classes.
        assert getattr(introspect_opt, name) is cls
    assert introspect_opt.__all__ == itk.__all__


def test_the_table_refuses_a_malformed_line() -> None:
    """A table line with another name, the other family's mixin, or a body is refused."""

    class IntrospectableAdamm(NewIntrospectionMixin, tf_keras.optimizers.Adam): ...

    class IntrospectableLegacySGD(NewIntrospectionMixin, tf_keras.optimizers.legacy.SGD): ...

    class IntrospectableNadam(NewIntrospectionMixin, tf_keras.optimizers.Nadam):
        def build(self, var_list: Any) -> None: ...

    with pytest.raises(
        TypeError, match=r"IntrospectableAdamm extends Adam: name it IntrospectableAdam\."
    ):
        ready_made(IntrospectableAdamm)
    for declared in (IntrospectableLegacySGD, IntrospectableNadam):
        with pytest.raises(TypeError, match=r"LegacyIntrospectionMixin for tf_keras\.optimizers"):
            ready_made(declared)
    # Refused before anything was registered.
    assert itk.introspectable(tf_keras.optimizers.Adam) is itk.IntrospectableAdam
    assert tf_keras.saving.get_registered_object("introspect_opt>IntrospectableAdam") is (
        itk.IntrospectableAdam
    )


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_constructor_config_and_registration_are_the_plain_classes(name: str) -> None:
    """Same signature, default name and config as the tf_keras class; registered by name."""
    cls, base = getattr(itk, name), EXPORTED[name]
    assert inspect.signature(cls) == inspect.signature(base)
    ours, plain = cls(learning_rate=0.05), base(learning_rate=0.05)
    assert ours.get_config() == plain.get_config()
    assert tf_keras.saving.get_registered_name(cls) == f"introspect_opt>{name}"
    assert tf_keras.saving.get_registered_object(f"introspect_opt>{name}") is cls
    schedule = tf_keras.optimizers.schedules.CosineDecay(
        0.1, 100, warmup_target=0.2, warmup_steps=5
    )
    original = cls(rate_for(name, schedule), clipnorm=1.0, name="mine")
    config = original.get_config()
    clone = cls.from_config(copy.deepcopy(config))
    assert type(clone) is cls and clone.get_config() == config


def _train_side_by_side(name: str, steps: int, jit: bool) -> dict[str, Any]:
    """A few updates by ours and the plain class, in one function, on identical variables."""
    rate = rate_for(name)
    rng = np.random.default_rng(0)
    kernel0 = rng.normal(size=(3, 2)).astype("float32")
    runs: dict[str, Any] = {}
    for label, cls in (("ours", getattr(itk, name)), ("plain", EXPORTED[name])):
        variables = [
            tf.Variable(kernel0),
            tf.Variable([0.5, -0.5]),
            tf.Variable(np.ones((4, 2), dtype="float32")),
        ]
        runs[label] = {"variables": variables, "optimizer": cls(rate, clipnorm=1.5)}

    def step(i: Any) -> Any:
        scale = tf.cast(i + 1, tf.float32)
        for run in runs.values():
            kernel, bias, _ = run["variables"]
            # Dense gradients, and sparse rows with a duplicate index.
            rows = tf.IndexedSlices(tf.ones((2, 2)) * scale, tf.constant([1, 1]), (4, 2))
            grads = [kernel * scale - 0.3, tf.sin(bias * scale), rows]
            run["optimizer"].apply_gradients(zip(grads, run["variables"], strict=True))
        return runs["ours"]["optimizer"].current_learning_rate

    compiled = tf.function(step, jit_compile=True) if jit else step
    rates = [compiled(tf.constant(i)) for i in range(steps)]
    return {
        "rates": rates,
        **{
            label: (run["variables"], plain_variables(run["optimizer"]))
            for label, run in runs.items()
        },
    }


# Every class eagerly; under XLA a sample of both families (compiling costs
# seconds per class).
XLA_SAMPLE = (
    "IntrospectableSGD",
    "IntrospectableAdam",
    "IntrospectableAdafactor",
    "IntrospectableLegacySGD",
    "IntrospectableLegacyAdam",
)
CASES = [pytest.param(name, False, id=f"{name}-eager") for name in sorted(EXPORTED)] + [
    pytest.param(name, True, id=f"{name}-xla") for name in XLA_SAMPLE
]


@pytest.mark.parametrize(("name", "jit"), CASES)
def test_updates_are_bit_identical_to_the_plain_class(name: str, jit: bool) -> None:
    """Weights and optimizer variables equal the plain tf_keras class's, bit for bit."""
    result = _train_side_by_side(name, 4, jit)
    (ours_vars, ours_state), (plain_vars, plain_state) = result["ours"], result["plain"]
    assert array_bits(ours_vars) == array_bits(plain_vars)
    assert len(ours_state) == len(plain_state)
    assert array_bits(ours_state) == array_bits(plain_state)
    expected = [0.05] * 4 if name in FLOAT_ONLY else [SCHEDULE(i) for i in range(4)]
    assert [bits(r) for r in result["rates"]] == [bits(e) for e in expected]


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("IntrospectableSGD", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
        ("IntrospectableAdamW", {"use_ema": True, "ema_overwrite_frequency": 2, "clipvalue": 0.1}),
        ("IntrospectableLegacySGD", {"momentum": 0.9, "nesterov": True, "global_clipnorm": 1.0}),
        ("IntrospectableLegacyAdam", {"amsgrad": True, "decay": 0.05}),
    ],
)
def test_fit_is_bit_identical_with_every_option(name: str, options: dict[str, Any]) -> None:
    """Two epochs of fit with momentum, weight decay, EMA, clipping or legacy decay match plain."""
    x, y = make_data()
    results = []
    for cls in (getattr(itk, name), EXPORTED[name]):
        model = make_model()
        model.compile(cls(SCHEDULE, **options), loss="mse")
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
        results.append((model.get_weights(), plain_variables(model.optimizer)))
    (ours_w, ours_s), (plain_w, plain_s) = results
    assert array_bits(ours_w) == array_bits(plain_w)
    assert array_bits(ours_s) == array_bits(plain_s)


def test_legacy_decay_argument_is_part_of_the_applied_rate() -> None:
    """The legacy `decay` argument divides the rate; the cache and its derivation include it."""
    optimizer = itk.IntrospectableLegacySGD(0.1, decay=0.5)
    w = tf.Variable([1.0])
    for n in range(1, 4):
        optimizer.apply_gradients([(tf.ones(1), w)])
        expected = np.float32(0.1) / (np.float32(1.0) + np.float32(0.5) * np.float32(n - 1))
        assert bits(optimizer.current_learning_rate) == bits(expected)
        assert bits(optimizer._derived_learning_rate()) == bits(expected)


def test_variables_and_checkpoint_positions_are_the_plain_classes() -> None:
    """Built optimizers list exactly the plain variables, under the same names, in order."""
    for name in ("IntrospectableAdam", "IntrospectableLegacyAdam"):
        model = make_model()
        ours, plain = getattr(itk, name)(), EXPORTED[name]()
        for optimizer in (ours, plain):
            optimizer.apply_gradients(
                zip(
                    [tf.zeros_like(v) for v in model.trainable_variables],
                    model.trainable_variables,
                    strict=True,
                )
            )
        assert [v.name for v in plain_variables(ours)] == [v.name for v in plain_variables(plain)]
