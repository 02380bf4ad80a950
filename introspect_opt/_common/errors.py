"""The error a refused load raises, and how error messages show values (both worlds)."""

from __future__ import annotations

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


class KerasThreeOnly(AttributeError, NotImplementedError):
    """A name of introspect_opt that the Keras 2 (tf_keras) world does not have.

    An ``AttributeError`` (so ``hasattr`` and ``getattr(..., default)`` work)
    and a ``NotImplementedError`` (what it means: not implemented for Keras 2).
    """


class RefusedWeights(RuntimeError):
    """Values that ``set_weights`` of a tf_keras optimizer refused: deliberately no ``ValueError``.

    tf_keras's HDF5 ``load_model`` calls ``optimizer.set_weights`` inside
    ``except ValueError`` and turns that error into a log line, leaving a fresh
    optimizer: a refusal that is a ``ValueError`` would be lost there.
    """


def refused_load(what: str, source: str, reason: str, fix: str = "") -> RefusedLoad:
    """The error for a refused load: ``Cannot restore <what> from <source>: <reason> <fix>``.

    Args:
        what: What could not be restored (``"IntrospectableSGD 'sgd'"``,
            ``"the applied learning rate"``).
        source: Where from (a file, ``"the tf.train.Checkpoint being restored"``).
        reason: What was found, what that means, and that nothing was loaded.
        fix: What to do instead.
    """
    text = f"Cannot restore {what} from {source}: {reason}"
    if source == CHECKPOINT_SOURCE and "skip_mismatch" in fix:
        # A checkpoint restore has no skip_mismatch to offer.
        kept = fix.split("; or,", 1)[0] if "; or," in fix else ""
        fix = (kept.rstrip(".") + ". " if kept else "") + (
            "A tf.train.Checkpoint has no skip_mismatch: restore it into an optimizer "
            "like the one that wrote it, or leave the optimizer out of the "
            "tf.train.Checkpoint you restore into (that keeps its current state)."
        )
    return RefusedLoad(f"{text} {fix}" if fix else text)


def describe_value(value: Any) -> str:
    """``value`` as an error message shows it: what it is, of which type (shortened)."""
    if isinstance(value, type):
        return f"the class {value.__module__}.{value.__qualname__}"
    text = repr(value)
    if len(text) > _REPR_LIMIT:
        text = text[: _REPR_LIMIT - 3] + "..."
    return f"{text} (type {type(value).__module__}.{type(value).__qualname__})"
