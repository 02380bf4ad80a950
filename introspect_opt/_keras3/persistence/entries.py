"""The state's entries in a file or checkpoint, validated in full before anything is assigned."""

from __future__ import annotations

import numpy as np

from introspect_opt._common.errors import KeepState, refused_load
from introspect_opt._common.names import CORE_KEYS, COUNT_KEY
from introspect_opt._common.protocols import WeightsStore
from introspect_opt._keras3.features import Entries, features, known_keys
from introspect_opt._keras3.host import is_number_array

_WHAT = "the applied learning rate"


def check_entries(store: WeightsStore, source: str) -> Entries | None:
    """This state's entries in a file, validated in full; None for a plain file.

    Checks names, groups, shapes and dtypes of every entry (the features'
    own rules included) before the caller assigns anything.
    """
    keys = set(store.keys())
    if not keys:
        return None  # written by the plain optimizer: derive the rate
    groups = [set(CORE_KEYS)] + [set(f.keys) for f in features()]
    complete = set(CORE_KEYS) <= keys and all(g <= keys or not (g & keys) for g in groups)
    if not keys <= known_keys() or not complete:
        optional = sorted(sorted(f.keys) for f in features())
        raise refused_load(
            _WHAT,
            source,
            f"expected the entries {sorted(CORE_KEYS)} (plus, optionally, the groups "
            f"{optional}), found {sorted(keys)}. The file was not written by this version "
            "of introspect_opt, or was changed since; nothing was loaded into the optimizer.",
            keep_state=KeepState.KERAS3,
        )
    entries: Entries = {}
    for key in sorted(keys):
        value = np.asarray(store[key])
        if not is_number_array(value):
            raise refused_load(
                _WHAT,
                source,
                f"entry {key!r} holds {value.dtype} data, not numbers. The file is "
                "damaged; nothing was loaded into the optimizer.",
                keep_state=KeepState.KERAS3,
            )
        entries[key] = value
    problems = [f"{k} has shape {entries[k].shape}" for k in CORE_KEYS if entries[k].shape != ()]
    if entries[COUNT_KEY].dtype.kind not in "iu":
        problems.append(f"{COUNT_KEY} holds {entries[COUNT_KEY].dtype}, not an integer")
    for feature in features():
        if feature.keys[0] in entries:
            problem = feature.check(entries)
            if problem:
                problems.append(problem)
    if problems:
        raise refused_load(
            _WHAT,
            source,
            f"{'; '.join(problems)}. The file is damaged or was not written by "
            "introspect_opt; nothing was loaded into the optimizer.",
            keep_state=KeepState.KERAS3,
        )
    return entries
