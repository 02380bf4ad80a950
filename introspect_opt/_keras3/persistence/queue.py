"""Loads waiting for ``build``: the queue, the order of loads and restores, and applying them.

An optimizer that is not built has no slots yet. A checked file's step
counter (and rate) are assigned at once; its slots wait in a queue
(:class:`Pending`) until ``build``, which matches them to the variables it is
given (``matching``). Every save writes the queue (``files.values_to_save``,
``checkpoint``), and a newer load or ``tf.train.Checkpoint`` restore wins.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np

from introspect_opt._common.errors import RefusedLoad
from introspect_opt._common.manifest import Manifest
from introspect_opt._common.names import COUNT_KEY, RATE_KEY
from introspect_opt._keras3.features import Entries
from introspect_opt._keras3.host import host_array
from introspect_opt._keras3.persistence.matching import (
    Plan,
    apply,
    assign,
    host_values,
    make_plan,
    prefix_count,
)
from introspect_opt._keras3.state import AppliedRateState


@dataclasses.dataclass(frozen=True)
class Pending:
    """A file's state for an optimizer that is not built yet, waiting for its build."""

    source: str
    slots: list[np.ndarray]  # the values after the prefix
    entries: Entries | None
    manifest: Manifest | None  # the writer's, for the whole file
    previous: list[np.ndarray]  # the prefix just before this load (rollback)
    sequence: int  # when it was queued (see ``restore_started``)
    earlier: Pending | None = None  # the queued load this one superseded


# Orders queued loads and checkpoint restores (a newer one wins at build).
_EVENTS = itertools.count()


def restore_started(state: AppliedRateState) -> None:
    """A tf.train.Checkpoint restore into the optimizer begins (newer than queued loads).

    A plain checkpoint's slots stay with TensorFlow until ``build``: queued
    loads older than it do not apply then. (A checkpoint of ours with a
    manifest joins the queue instead, see ``restore_handled``.)
    """
    state.__dict__["_checkpoint_restored_before"] = state.__dict__.get("_checkpoint_restored", -1)
    state.__dict__["_checkpoint_restored"] = next(_EVENTS)


def restore_handled(state: AppliedRateState) -> None:
    """The checkpoint being restored was refused, or its state joined the queue."""
    state.__dict__["_checkpoint_restored"] = state.__dict__.get("_checkpoint_restored_before", -1)


def enqueue(
    optimizer: Any,
    state: AppliedRateState,
    source: str,
    values: list[np.ndarray],
    entries: Entries | None,
    manifest: Manifest | None,
) -> None:
    """Queues a checked file's slots for ``build``; assigns the step counter and rate now."""
    count = prefix_count(optimizer)
    prefix = optimizer._plain_variables()[:count]
    state.pending = Pending(
        source=source,
        slots=values[count:],
        entries=entries,
        manifest=manifest,
        previous=host_values(prefix),
        sequence=next(_EVENTS),
        earlier=state.pending,
    )
    assign(prefix, values[:count])
    state.preview_entries(optimizer, entries)


def apply_pending(optimizer: Any, state: AppliedRateState) -> tuple[Pending, Plan] | None:
    """Applies a queued file's state once the optimizer is built (from build()).

    A queued load that does not fit the variables the optimizer was built for
    never happened: the step counter goes back to what it was before it, the
    load it superseded, if any, applies, and the error is raised (``build``
    cannot know whether the load asked for ``skip_mismatch``).
    """
    pending, state.pending = state.pending, None
    if pending is None:
        return None
    if state.__dict__.get("_checkpoint_restored", -1) > pending.sequence:
        return None  # a tf.train.Checkpoint restored since is newer: TensorFlow restores its slots
    prefix = optimizer._plain_variables()[: prefix_count(optimizer)]
    values = host_values(prefix) + pending.slots
    try:
        plan = make_plan(optimizer, pending.manifest, values, pending.source)
    except ValueError as error:
        assign(prefix, pending.previous)
        state.pending = pending.earlier
        apply_pending(optimizer, state)
        raise RefusedLoad(
            f"{error} (The state was loaded before the optimizer was built, so it could "
            "only be matched to the variables it trains now; the optimizer is back to the "
            "state it had before that load.)"
        ) from None
    apply(optimizer, plan, pending.source)
    state.assign_entries(optimizer, pending.entries, plan.owners)
    return pending, plan


def pending_rate(state: AppliedRateState, update_count: Any) -> np.ndarray | None:
    """The rate a queued file recorded, if it belongs to ``update_count``."""
    entries = None if state.pending is None else state.pending.entries
    if not entries or int(entries[COUNT_KEY]) != int(host_array(update_count)):
        return None
    rate: np.ndarray = entries[RATE_KEY]
    return rate
