"""The one extension point opt-in features attach to, and their registry.

Everything beyond the cached rate (the plateau multiplier, the rate history,
diagnostics) is a :class:`Feature`: a named set of variables of the state
(``_keras3.state``), created on request, saved next to the core entries, and
called by the optimizer at two moments of every update. Features register
themselves (:func:`register_feature`); neither this module nor the state
imports any of them.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from introspect_opt._common.names import CORE_KEYS

if TYPE_CHECKING:  # annotations only: the state imports this module
    from introspect_opt._keras3.state import AppliedRateState

# This state's entries as read from a file (validated), by name.
Entries = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Update:
    """What an applied update hands to the features (all traced values)."""

    gradients: list[Any]
    variables: list[Any]
    rate: Any  # in the cache's dtype
    count: Any  # the update count it belongs to
    # What each feature that watches variables (Feature.watches_variables)
    # returned from after_variable, by feature name, one per variable above.
    observed: dict[str, list[Any]] = dataclasses.field(default_factory=dict)


class Feature:
    """An opt-in extension of the state: the extension point, documented.

    A feature owns the state attributes named in ``keys`` (variables, also its
    entry names in files and checkpoints). The optimizer calls, for every
    feature whose variables exist:

    * :meth:`before_variable` and :meth:`after_variable` around each
      variable's own update, when :meth:`watches_variables` says so: the
      optimizer then applies the update one variable at a time (its decoupled
      weight decay, then its update step) and hands each feature the change
      it made, without a copy of the model (``turns``: the result is
      bit-identical to the whole update at once);
    * :meth:`after_update` right after an update was applied and the cached
      rate written (never on micro-steps or skipped steps), with what
      :meth:`after_variable` returned in ``update.observed[name]``.

    Loading calls :meth:`check` on a file's entries before anything is
    assigned and :meth:`assign` after; ``None`` entries mean the file was
    written without the feature (by a plain optimizer, or with it off).

    On TensorFlow a feature that files create may also create its variables
    at build, dormant (:meth:`create_dormant`, see ``dormant``): a step
    traced before the feature is switched on then still updates it. Its
    :meth:`create` switches them on with :meth:`AppliedRateState.new_variable`,
    and its per-update hooks run for dormant variables too, each gating its
    own work with ``_dormant.when_on``.
    """

    name: ClassVar[str]
    keys: ClassVar[tuple[str, ...]]
    # A file or checkpoint holding this feature's entries creates it on load:
    # training state that the rate depends on must not be dropped.
    created_by_files: ClassVar[bool] = False
    # Entries with one row per model variable the optimizer was built for, in
    # the order the manifest's ``built_for`` records: a load checks their row
    # count against the manifest and hands ``assign`` the owners of the rows.
    rows_per_model_variable: ClassVar[tuple[str, ...]] = ()

    def create(self, optimizer: Any, state: AppliedRateState, **options: Any) -> None:
        """Creates the feature's variables (called eagerly, in the strategy's scope)."""
        raise NotImplementedError

    def create_dormant(self, optimizer: Any, state: AppliedRateState) -> None:
        """Creates the feature's variables dormant at build (TensorFlow; default: none)."""

    def options_for(self, entries: Entries) -> dict[str, Any]:
        """The options to create the feature with, to hold a file's entries."""
        return {}

    def adjust_config(self, optimizer: Any, config: dict[str, Any]) -> None:
        """Edits ``optimizer.get_config()``'s result in place (default: nothing)."""

    def wanted_by(self, optimizer: Any) -> dict[str, Any] | None:
        """Options to create the feature with at build, when the optimizer needs it.

        None (the default): only when asked for (:meth:`AppliedRateState.enable`).
        """
        return None

    def options_for_checkpoint(self) -> dict[str, Any] | None:
        """Options to create the feature with for a tf.train.Checkpoint holding it.

        None: the feature cannot be created without seeing the values (it is
        then restored only into an optimizer that already has it).
        """
        return {}

    def watches_variables(self, optimizer: Any, state: AppliedRateState) -> bool:
        """Whether the update must call :meth:`before_variable` / :meth:`after_variable`."""
        return False

    def before_variable(
        self, optimizer: Any, state: AppliedRateState, gradient: Any, variable: Any
    ) -> Any:
        """Called right before ``variable``'s weight decay and update step (traced).

        Returns what :meth:`after_variable` gets back: scalars (the update
        waits for them, so that a read of the variable here is released
        before the variable is updated in place).
        """
        return None

    def after_variable(
        self,
        optimizer: Any,
        state: AppliedRateState,
        gradient: Any,
        variable: Any,
        rate: Any,
        before: Any,
        change: Any,
    ) -> Any:
        """Called right after ``variable``'s update (traced); returns what it observed.

        ``change``: what the turn (decay and update step) changed the variable
        by, dense or as sparse rows to add (``_keras3.turns``: the value the
        update step assigned where it can, else the variable after minus a
        copy before). Return scalars: the optimizer keeps them until
        :meth:`after_update`.
        """
        return None

    def after_update(self, optimizer: Any, state: AppliedRateState, update: Update) -> None:
        """Called after every applied update (traced)."""

    def check(self, entries: Entries) -> str | None:
        """Why a file's entries of this feature cannot be restored, or None.

        By default every entry is a scalar.
        """
        shapes = {key: entries[key].shape for key in self.keys if entries[key].shape != ()}
        return (
            f"{sorted(shapes)} have shapes {list(shapes.values())}, not scalars" if shapes else None
        )

    def queued(self, optimizer: Any, entries: Entries) -> None:
        """A file with this feature's entries was queued for an unbuilt optimizer.

        For what must show before the build (the rate the next update uses).
        """

    def assign(
        self,
        optimizer: Any,
        state: AppliedRateState,
        entries: Entries | None,
        owners: dict[int, int] | None = None,
    ) -> None:
        """Restores the feature's variables from a file's entries (None: none).

        ``owners``: which of the variables the optimizer was built for each
        model variable the file's manifest records is (file index -> index
        here), for entries kept per model variable; None when unknown (a file
        without a manifest, or written before its optimizer was built).
        """
        for key in self.keys:
            variable = getattr(state, key)
            if entries is not None:
                variable.assign(entries[key])


_FEATURES: dict[str, Feature] = {}


def register_feature(feature: Feature) -> Feature:
    """Makes a feature known to every state (once per name)."""
    _FEATURES[feature.name] = feature
    return feature


def features() -> list[Feature]:
    """Every registered feature, in registration order."""
    return list(_FEATURES.values())


def feature_named(name: str) -> Feature:
    """The registered feature called ``name``."""
    return _FEATURES[name]


def known_keys() -> set[str]:
    """Every entry name a state may hold: the core ones and every feature's."""
    return set(CORE_KEYS).union(*(f.keys for f in _FEATURES.values()))
