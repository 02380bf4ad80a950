"""Typing protocols for what Keras hands us untyped (Keras ships no type information)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol


class WeightsStore(Protocol):
    """The store ``save_own_variables`` / ``load_own_variables`` receive.

    Keras passes an ``H5Entry`` (``.weights.h5``, ``.keras``), a dict (in
    memory), or tf_keras's equivalents: a mapping from entry names to arrays.
    """

    def __getitem__(self, key: str) -> Any: ...
    def __setitem__(self, key: str, value: Any) -> None: ...
    def __contains__(self, key: object) -> bool: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[str]: ...
    def keys(self) -> Iterable[str]: ...
