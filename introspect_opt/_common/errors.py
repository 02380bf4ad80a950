"""The error a refused load raises, and how error messages show values (both worlds)."""

from __future__ import annotations

import enum
from typing import Any

# The longest ``repr`` an error message shows of a value before shortening it.
_REPR_LIMIT = 80
# A refused checkpoint restore's source, as messages name it.
CHECKPOINT_SOURCE = "the tf.train.Checkpoint being restored"


class RefusedLoad(ValueError, RuntimeError):
    """State that cannot be restored; refused before anything was assigned.

    The same class in both Keras worlds. A ``ValueError``, as Keras 3 raises
    for state that does not fit; also a ``RuntimeError``, what the tf_keras
    world raised before, so that code catching either keeps working.
    """


class RefusedWeights(RuntimeError):
    """Values that ``set_weights`` of a tf_keras optimizer refused: deliberately no ``ValueError``.

    tf_keras's HDF5 ``load_model`` calls ``optimizer.set_weights`` inside
    ``except ValueError`` and turns that error into a log line, leaving a fresh
    optimizer: a refusal that is a ``ValueError`` would be lost there.
    """


class KeepState(enum.Enum):
    """How a refused load's message says to keep the optimizer's current state: one per world.

    The member is the sentence for a file; a restore from a tf.train.Checkpoint
    (``CHECKPOINT_SOURCE``) has no ``skip_mismatch`` and gets
    ``CHECKPOINT_KEEP_STATE`` in either world.
    """

    KERAS3 = (
        "To load the model weights and keep this optimizer's current state, use "
        "`model.load_weights(path, skip_mismatch=True)`."
    )
    TF_KERAS = (
        "To load the model weights and keep this optimizer's current state, use "
        "`model.load_weights(path, skip_mismatch=True)` (or `load_model(path, compile=False)`)."
    )


CHECKPOINT_KEEP_STATE = (
    "A tf.train.Checkpoint has no skip_mismatch: restore it into an optimizer like the "
    "one that wrote it, or leave the optimizer out of the tf.train.Checkpoint you restore "
    "into (that keeps its current state)."
)


def refused_load(
    what: str, source: str, reason: str, fix: str = "", *, keep_state: KeepState | None
) -> RefusedLoad:
    """The error for a refused load: ``Cannot restore <what> from <source>: <reason> <fix> <keep>``.

    Args:
        what: What could not be restored (``"IntrospectableSGD 'sgd'"``,
            ``"the applied learning rate"``).
        source: Where from (a file, or ``CHECKPOINT_SOURCE``).
        reason: What was found, what that means, and that nothing was loaded.
        fix: How to make the load fit (one or more sentences), if anything can.
        keep_state: The caller's world, whose sentence on keeping the current
            state ends the message (``CHECKPOINT_KEEP_STATE`` for a checkpoint);
            None for a message that already says it (it quotes another refusal).
    """
    parts = [f"Cannot restore {what} from {source}: {reason}", fix]
    if keep_state is not None:
        parts.append(CHECKPOINT_KEEP_STATE if source == CHECKPOINT_SOURCE else keep_state.value)
    return RefusedLoad(" ".join(part for part in parts if part))


def describe_value(value: Any) -> str:
    """``value`` as an error message shows it: what it is, of which type (shortened)."""
    if isinstance(value, type):
        return f"the class {value.__module__}.{value.__qualname__}"
    text = repr(value)
    if len(text) > _REPR_LIMIT:
        text = text[: _REPR_LIMIT - 3] + "..."
    return f"{text} (type {type(value).__module__}.{type(value).__qualname__})"
