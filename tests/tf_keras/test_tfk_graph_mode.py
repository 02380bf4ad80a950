"""TF1-style graph code: an optimizer used inside ``tf.Graph()`` with ``tf.compat.v1.Session``.

Legacy tf_keras optimizers (``OptimizerV2``) create their step counter,
hyperparameters and slots lazily, in the graph of their first update, so one
created eagerly can train a ``tf.Graph``. The legacy twins must too, and the
applied rate must be readable there with ``sess.run``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tfk_helpers import FLOAT_ONLY, array_bits, bits, exported_optimizers, rate_for

from introspect_opt import tf_keras as itk

EXPORTED = exported_optimizers()
LEGACY = sorted(name for name in EXPORTED if name.startswith("IntrospectableLegacy"))
STEPS = 3


def _expected_rate(name: str, step: int) -> Any:
    rate = rate_for(name)
    return rate if name in FLOAT_ONLY else rate(step)


def _graph_loss(variables: list[Any], step: Any) -> Any:
    """A loss with dense gradients and sparse ones (a gather with a repeated row)."""
    kernel, bias, table = variables
    scale = tf.cast(step + 1, tf.float32)
    rows = tf.gather(table, [1, 1])  # IndexedSlices gradients
    return (
        tf.reduce_sum(tf.square(kernel * scale - 0.3))
        + tf.reduce_sum(tf.sin(bias * scale))
        + tf.reduce_sum(rows * scale)
    )


def _initial_values() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.normal(size=(3, 2)).astype("float32"),
        np.array([0.5, -0.5], dtype="float32"),
        np.ones((4, 2), dtype="float32"),
    ]


@pytest.mark.parametrize("created", ["eagerly", "in_the_graph"])
@pytest.mark.parametrize("name", LEGACY)
def test_legacy_twins_train_a_tf1_graph_like_the_plain_class(name: str, created: str) -> None:
    """Session steps give the plain class's variables bit for bit, and the applied rates."""
    classes = {"ours": getattr(itk, name), "plain": EXPORTED[name]}

    def make(label: str) -> Any:
        return classes[label](rate_for(name), clipnorm=1.5)

    expected = [bits(_expected_rate(name, step)) for step in range(STEPS)]  # eagerly
    optimizers = {label: make(label) for label in classes} if created == "eagerly" else {}
    graph = tf.Graph()
    with graph.as_default():
        if not optimizers:
            optimizers = {label: make(label) for label in classes}
        ours = optimizers["ours"]
        step = tf.compat.v1.placeholder(tf.int64, shape=())
        # Read before the first update is built: the state is created here, in
        # this graph, and the read sees every later update.
        read_before = ours.current_learning_rate
        variables, train_ops = {}, []
        for label, optimizer in optimizers.items():
            variables[label] = [tf.Variable(v) for v in _initial_values()]
            if label == "ours":  # both TF1-style ways to build the update
                loss = _graph_loss(variables[label], step)
                gradients = optimizer.get_gradients(loss, variables[label])
                train = optimizer.apply_gradients(zip(gradients, variables[label], strict=True))
            else:

                def loss_fn(trained: list[Any] = variables[label]) -> Any:
                    return _graph_loss(trained, step)

                train = optimizer.minimize(loss_fn, var_list=variables[label])
            train_ops.append(train)
        read_after = ours.current_learning_rate
        assert read_after.graph is graph
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            assert bits(sess.run(read_after)) == expected[0]  # before any update
            for n in range(1, STEPS + 1):
                sess.run(train_ops, feed_dict={step: n - 1})
                applied, early = sess.run([read_after, read_before])
                assert bits(applied) == bits(early) == expected[n - 1], n
            assert sess.run(ours.iterations) == STEPS
            ours_state = sess.run([*variables["ours"], *ours.weights])
            plain_state = sess.run([*variables["plain"], *optimizers["plain"].weights])
    # One graph: names get suffixes ("SGD_1", "Variable_3"); the kinds must match.
    names = {
        label: [v.name.rsplit("/", 1)[-1] for v in optimizer.weights]
        for label, optimizer in optimizers.items()
    }
    assert names["ours"] == names["plain"]
    assert array_bits(ours_state) == array_bits(plain_state)


def test_legacy_twin_apply_gradients_in_a_graph_reads_the_legacy_decay() -> None:
    """`apply_gradients` with the legacy `decay` argument, read after each session step."""
    optimizer = itk.IntrospectableLegacySGD(0.1, decay=0.5, momentum=0.9)
    with tf.Graph().as_default() as graph:
        w = tf.Variable([1.0, 2.0])
        (gradient,) = tf.compat.v1.gradients(tf.reduce_sum(w * w), [w])
        train = optimizer.apply_gradients([(gradient, w)])
        applied = optimizer.current_learning_rate
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for n in range(1, 4):
                sess.run(train)
                expected = np.float32(0.1) / (np.float32(1.0) + np.float32(0.5) * np.float32(n - 1))
                assert bits(sess.run(applied)) == bits(expected)
            assert sess.run(optimizer.iterations) == 3


def test_a_legacy_twin_creates_its_state_with_its_step_counter() -> None:
    """Nothing at construction (as plain OptimizerV2); a read or the first update creates it."""
    name = "IntrospectableLegacyAdam"
    optimizer = getattr(itk, name)(rate_for(name))
    plain = EXPORTED[name](rate_for(name))
    assert "_introspection_state" not in vars(optimizer)
    assert plain._iterations is None and optimizer._iterations is None  # both lazy
    assert bits(optimizer.current_learning_rate) == bits(_expected_rate(name, 0))
    assert "_introspection_state" in vars(optimizer) and optimizer._iterations is not None
    w = tf.Variable([1.0])
    for n in range(1, 3):
        optimizer.apply_gradients([(tf.ones(1), w)])
        assert bits(optimizer.current_learning_rate) == bits(_expected_rate(name, n - 1))
    fresh = getattr(itk, name)(rate_for(name))
    fresh.apply_gradients([(tf.ones(1), tf.Variable([1.0]))])  # the first update creates it
    assert "_introspection_state" in vars(fresh)


@pytest.mark.parametrize("cls", [tf_keras.optimizers.SGD, itk.IntrospectableSGD])
def test_new_optimizers_do_not_support_tf1_graphs_upstream(cls: type) -> None:
    """tf_keras's new optimizers, plain ones included, cannot train a TF1 graph (documented).

    Created eagerly they fail on the eager step counter; created in the graph,
    ``apply_gradients`` returns only the counter's increment, and running it
    leaves the weights unchanged.
    """
    eager = cls(0.1)
    with tf.Graph().as_default():
        w = tf.Variable([1.0, 2.0])
        (gradient,) = tf.compat.v1.gradients(tf.reduce_sum(w * w), [w])
        with pytest.raises(RuntimeError, match="capture an EagerTensor"):
            eager.apply_gradients([(gradient, w)])
    with tf.Graph().as_default() as graph:
        optimizer = cls(0.1)
        w = tf.Variable([1.0, 2.0])
        (gradient,) = tf.compat.v1.gradients(tf.reduce_sum(w * w), [w])
        train = optimizer.apply_gradients([(gradient, w)])
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(train)
            assert sess.run(w).tolist() == [1.0, 2.0]  # no update ran
            assert sess.run(optimizer.iterations) == 1


def test_the_documented_tf1_recipe() -> None:
    """docs/keras2.md, "TF1-style graph code", as written there (tf.keras is tf_keras)."""
    from introspect_opt.tf_keras import IntrospectableLegacyAdam

    schedule = tf.keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    optimizer = IntrospectableLegacyAdam(schedule)  # created eagerly
    with tf.Graph().as_default() as graph:
        weights = [tf.Variable([1.0, -2.0])]
        loss = tf.reduce_sum(tf.square(weights[0]))
        gradients = optimizer.get_gradients(loss, weights)
        train = optimizer.apply_gradients(zip(gradients, weights, strict=True))
        applied = optimizer.current_learning_rate  # a tensor of this graph
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for n in range(1, 3):
                sess.run(train)
                assert sess.run(applied) == pytest.approx(0.1 * 0.5 ** (n - 1))
