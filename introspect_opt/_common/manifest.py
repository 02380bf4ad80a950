"""The manifest: what a file or checkpoint of ours says it holds (both Keras worlds).

Every file and checkpoint an introspectable optimizer writes carries one, in
the state's group (entry ``manifest``, JSON as bytes) or as a checkpoint
attribute of the state. It records identity instead of leaving the loader to
infer it:

* ``class``: the public Keras optimizer class that wrote it;
* ``layout``: what a build of that optimizer, with its arguments, creates for
  two scratch variables (a matrix and a vector): each created variable's role,
  which scratch variable it belongs to, shape and dtype. Any argument that
  changes the slot layout (``momentum``, ``amsgrad``, ``use_ema``,
  ``gradient_accumulation_steps`` ...) changes it; it is derived from a real
  build, not from a hand-kept list per class;
* ``built_for``: the model variables the optimizer was built for (path, shape,
  dtype), in its order; None when it was not built;
* ``variables``: for each optimizer variable, in file order, its name, its
  role, the index in ``built_for`` of the model variable it belongs to (None
  for the optimizer's own: step counter, rate, scalars), shape and dtype.

A load compares ``class`` and ``layout`` with the target before anything is
assigned (built or not), and assigns slots to the variables they belong to:
by path where every path is found, else by position where the two lists
match, else not at all. Files without a manifest (plain Keras, introspect-opt
0.2) are matched by position, as Keras does, with every shape checked.

This module holds the format (the records, encoding, validation, the cache of
derived layouts) and Keras 3's slot naming; each world describes its own
optimizers (``_keras3.persistence.manifest``, ``_tf_keras.manifest``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from introspect_opt._common.errors import KeepState, RefusedLoad, refused_load

FORMAT = "introspect_opt.manifest/1"

# The optimizer variable ``name`` Keras 3 gives a slot made with
# ``add_variable_from_reference``: the model variable's path with "/" as "_",
# then "_" and the slot's role ("dense_kernel_momentum").
_SEPARATOR = "_"
_AUTO_NAMED = re.compile(r"variable(_\d+)?")


@dataclasses.dataclass(frozen=True)
class Slot:
    """One optimizer variable, as recorded."""

    name: str
    role: str
    owner: int | None  # index into built_for; None: the optimizer's own
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "owner": self.owner,
            "shape": list(self.shape),
            "dtype": self.dtype,
        }


@dataclasses.dataclass(frozen=True)
class ModelVariable:
    """A model variable an optimizer was built for, as recorded."""

    path: str
    shape: tuple[int, ...]
    dtype: str


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Identity of a file's optimizer state (see the module docstring)."""

    optimizer_class: str
    layout: tuple[tuple[Any, ...], ...] | None  # None: could not be derived
    built_for: tuple[ModelVariable, ...] | None
    variables: tuple[Slot, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "class": self.optimizer_class,
            "layout": None if self.layout is None else [list(e) for e in self.layout],
            "built_for": None
            if self.built_for is None
            else [
                {"path": v.path, "shape": list(v.shape), "dtype": v.dtype} for v in self.built_for
            ],
            "variables": [s.to_json() for s in self.variables],
        }

    def encode(self) -> np.ndarray:
        """The manifest as an array of bytes (what HDF5 files store)."""
        text = json.dumps(self.to_json(), sort_keys=True)
        encoded: np.ndarray = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()
        return encoded

    def with_prefix(self, prefix: list[Slot]) -> Manifest:
        """The same manifest with its first ``len(prefix)`` variables replaced."""
        return dataclasses.replace(self, variables=(*prefix, *self.variables[len(prefix) :]))


def shape_of(variable: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in variable.shape)


def attribute(
    variables: list[Any], built_for: list[Any], dtype_of: Callable[[Any], str]
) -> list[Slot]:
    """Records, for each Keras 3 optimizer variable, its role and the model variable it belongs to.

    * A slot Keras makes with ``add_variable_from_reference`` is named after
      its model variable's path ("dense_kernel_momentum"); the longest path
      that prefixes the name wins. Where several model variables have that
      path (two submodels each with a layer "dense"), Keras creates their
      slots in the order of the variables it was built for: the k-th such
      slot of a role belongs to the k-th of them.
    * Variables named exactly like model variables (Adafactor's factored
      slots, ``m`` per variable) belong to them in the same order: the k-th
      belongs to the (k // m)-th model variable of that name, role
      ``"<name>:<k % m>"``.
    * Anything else is the optimizer's own (step counter, rate, scalars).

    ``dtype_of(variable)``: a variable's dtype, by name.
    """
    prefixes: dict[str, list[int]] = {}
    by_name: dict[str, list[int]] = {}
    for index, variable in enumerate(built_for):
        prefixes.setdefault(variable.path.replace("/", "_") + _SEPARATOR, []).append(index)
        by_name.setdefault(str(variable.name), []).append(index)
    seen: dict[tuple[str, str], int] = {}
    owners: list[int | None] = []
    roles: list[str] = []
    for variable in variables:
        name = str(variable.name)
        owner: int | None = None
        # An unnamed Keras variable is numbered process-wide ("variable_7",
        # Nadam's u_product): the number says nothing about its role.
        role = "variable" if _AUTO_NAMED.fullmatch(name) else name
        # The longest model-variable prefix wins: try each "_" from the right.
        cut = name.rfind(_SEPARATOR)
        while cut > 0:
            found = prefixes.get(name[: cut + 1])
            if found is not None:
                role = name[cut + 1 :]
                k = seen.get((name[: cut + 1], role), 0)
                seen[(name[: cut + 1], role)] = k + 1
                owner = found[k] if k < len(found) else None
                break
            cut = name.rfind(_SEPARATOR, 0, cut)
        owners.append(owner)
        roles.append(role)
    named: dict[str, list[int]] = {}
    for position, variable in enumerate(variables):
        if owners[position] is None and str(variable.name) in by_name:
            named.setdefault(str(variable.name), []).append(position)
    for name, positions in named.items():
        per_variable, left = divmod(len(positions), len(by_name[name]))
        if per_variable and not left:
            for k, position in enumerate(positions):
                owners[position] = by_name[name][k // per_variable]
                roles[position] = f"{name}:{k % per_variable}"
    return [
        Slot(str(v.name), role, owner, shape_of(v), dtype_of(v))
        for v, role, owner in zip(variables, roles, owners, strict=True)
    ]


_LAYOUTS: dict[tuple[type, str], tuple[tuple[Any, ...], ...] | None] = {}
_LAYOUTS_LOCK = threading.Lock()


def cached_layout(
    optimizer: Any, derive: Callable[[Any, dict[str, Any]], tuple[tuple[Any, ...], ...]]
) -> tuple[tuple[Any, ...], ...] | None:
    """``derive(base class, config)``, once per class and configuration (both Keras worlds).

    None where the config does not serialize or the derivation fails (a
    learning-rate callable that does not serialize): the class is still compared.
    """
    base = type(optimizer)._introspect_base
    try:
        config = optimizer.get_config()
        key = (base, json.dumps(config, sort_keys=True, default=repr))
    except Exception:  # a config that does not serialize: no layout to compare
        return None
    with _LAYOUTS_LOCK:
        if key in _LAYOUTS:
            return _LAYOUTS[key]
    result: tuple[tuple[Any, ...], ...] | None
    try:
        result = derive(base, config)
    except Exception:  # any failure: the layout stays unknown (the class is still compared)
        result = None
    with _LAYOUTS_LOCK:
        _LAYOUTS[key] = result
    return result


def _problem(source: str, what: str, keep_state: KeepState) -> RefusedLoad:
    return refused_load(
        "the optimizer state",
        source,
        f"its manifest cannot be read: {what}. The file is damaged or was not written "
        "by introspect_opt; nothing was loaded into the optimizer.",
        keep_state=keep_state,
    )


def decode(value: Any, source: str, consistent: Any = None, *, keep_state: KeepState) -> Manifest:
    """Parses and validates a stored manifest; raises ``RefusedLoad`` naming ``source``.

    ``consistent(slot, built_for)``: whether a slot's recorded owner and role
    are those its name says; Keras 3's naming (``_consistent``) by default
    (tf_keras names its slots otherwise, see ``_tf_keras.manifest``).
    ``keep_state``: the caller's world, for a refusal's message.
    """
    array = np.asarray(value)
    try:
        raw = array.tobytes() if array.dtype == np.uint8 else bytes(array.item())
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, TypeError, UnicodeDecodeError) as error:
        raise _problem(source, f"it is not JSON ({error})", keep_state) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise _problem(source, f"its format is {found!r}, expected {FORMAT!r}", keep_state)
    try:
        built = data["built_for"]
        manifest = Manifest(
            optimizer_class=str(data["class"]),
            layout=None
            if data["layout"] is None
            else tuple(
                (str(r), None if o is None else int(o), [int(d) for d in s], str(t))
                for r, o, s, t in data["layout"]
            ),
            built_for=None
            if built is None
            else tuple(
                ModelVariable(str(v["path"]), tuple(int(d) for d in v["shape"]), str(v["dtype"]))
                for v in built
            ),
            variables=tuple(
                Slot(
                    str(v["name"]),
                    str(v["role"]),
                    None if v["owner"] is None else int(v["owner"]),
                    tuple(int(d) for d in v["shape"]),
                    str(v["dtype"]),
                )
                for v in data["variables"]
            ),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise _problem(
            source, f"an entry is missing or malformed ({error!r})", keep_state
        ) from None
    count = 0 if manifest.built_for is None else len(manifest.built_for)
    bad = [s.name for s in manifest.variables if s.owner is not None and not 0 <= s.owner < count]
    if bad:
        raise _problem(
            source, f"variables {bad} belong to model variables it does not list", keep_state
        )
    built_for = manifest.built_for or ()
    check = _consistent if consistent is None else consistent
    contradicting = [s.name for s in manifest.variables if not check(s, built_for)]
    if contradicting:
        raise _problem(
            source,
            f"variables {contradicting[:4]} are recorded with an owner or role their "
            "names contradict",
            keep_state,
        )
    return manifest


def _consistent(slot: Slot, built_for: tuple[ModelVariable, ...]) -> bool:
    """Whether a slot's recorded owner and role are those its Keras 3 name says (``attribute``)."""
    if slot.owner is None:
        auto = slot.role == "variable" and _AUTO_NAMED.fullmatch(slot.name) is not None
        return slot.role == slot.name or auto
    path = built_for[slot.owner].path
    if slot.name == path.replace("/", "_") + _SEPARATOR + slot.role:
        return True
    name, _, k = slot.role.rpartition(":")
    return name == slot.name == path.rsplit("/", 1)[-1] and k.isdigit()


def check_identity(
    manifest: Manifest,
    own_class: str,
    own_layout: Callable[[], tuple[tuple[Any, ...], ...] | None],
    what: str,
    source: str,
    fix: str,
    keep_state: KeepState,
) -> None:
    """Refuses state another optimizer class or slot layout wrote, built or not.

    ``own_layout()``: the target's layout (derived only once the class matches).
    ``fix``: how to create an optimizer the state fits; ``keep_state``: the
    caller's world (see ``refused_load``).
    """
    if manifest.optimizer_class != own_class:
        raise refused_load(
            what,
            source,
            f"it was written by {_a(manifest.optimizer_class)} optimizer, this one is "
            f"{_a(own_class)} (its slots would become this optimizer's slots). Nothing was "
            "loaded into the optimizer.",
            fix,
            keep_state=keep_state,
        )
    layout = own_layout()
    if manifest.layout is not None and layout is not None and manifest.layout != layout:
        raise refused_load(
            what,
            source,
            f"it was written by {_a(own_class)} with arguments that give another slot "
            f"layout (per variable it holds {_roles(manifest.layout)}, this optimizer "
            f"{_roles(layout)}). Nothing was loaded into the optimizer.",
            fix,
            keep_state=keep_state,
        )


def _roles(layout: tuple[tuple[Any, ...], ...]) -> str:
    """A layout as refusals describe it: the per-variable slots and the optimizer's own."""
    per_variable = sorted({str(entry[0]) for entry in layout if entry[1] is not None})
    own = [str(entry[0]) for entry in layout if entry[1] is None]
    return f"slots {per_variable or 'none'} and own variables {own or 'none'}"


def _a(name: str) -> str:
    """``name`` with its article: "an Adagrad", "a SGD" (read as the letters' names)."""
    vowel = name[:1] in "AEIOUaeiou" or name.startswith(("SGD", "RMS", "Ftrl"))
    return f"{'an' if vowel else 'a'} {name}"
