"""The contract every target store implements, whatever it is."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import models

from django_mirror.core.events import Event


@dataclass
class ApplyResult:
    """What one ``apply`` did; ``failed`` events go to the dead-letter table."""

    applied: int = 0
    stale: int = 0
    failed: list[tuple[Event, str]] = field(default_factory=list)
    #: Applied events per model label, for the per-model metrics.
    applied_by_model: dict[str, int] = field(default_factory=dict)

    def count(self, model_label: str, applied: int) -> None:
        self.applied += applied
        self.applied_by_model[model_label] = self.applied_by_model.get(model_label, 0) + applied


@dataclass
class CopyResult:
    """What one ``copy`` did: rows inserted, rows the target already had or had seen,
    and rows skipped because a newer row holds one of their unique values."""

    copied: int = 0
    skipped: int = 0
    clashed: int = 0
    #: Rows (``{attname: value}``) the target refused, with the reason: dead letters.
    failed: list[tuple[dict[str, Any], str]] = field(default_factory=list)


def latest_per_row(events: Sequence[Event]) -> list[Event]:
    """Keep only the newest event of each row: duplicates and reorderings collapse here."""
    newest: dict[tuple[str, str], Event] = {}
    for event in events:
        current = newest.get(event.key)
        if current is None or event.version > current.version:
            newest[event.key] = event
    return list(newest.values())


class Target:
    """A store rows are mirrored into; subclass it for a store django-mirror does not ship.

    ``apply`` must be idempotent and order-free: it applies an event only when its
    version is newer than the one the target holds for that row, and a delete leaves a
    tombstone version so an older upsert arriving late cannot bring the row back.
    ``copy`` inserts only where the target has neither row nor version. ``fetch`` and
    ``scan`` read rows back (tombstones hidden) for verify and shadow reads, as
    ``{attname: value}`` dicts with Python values of the model's fields.
    See ``docs/targets.md``.
    """

    def apply(self, events: Sequence[Event]) -> ApplyResult:
        raise NotImplementedError

    def apply_live(self, events: Sequence[Event]) -> ApplyResult:
        """``apply`` for live mirroring, whose writes race replay's on the same rows; a
        store whose ``apply`` checks versions apart from its writes makes each write
        conditional here."""
        return self.apply(events)

    def copy(self, model: type[models.Model], rows: Sequence[dict[str, Any]]) -> CopyResult:
        """Insert rows (``{attname: value}``) only where the target has no row, version
        or tombstone for them: a copy must never undo what replay applied."""
        raise NotImplementedError

    def versions(self, model_label: str, pks: Sequence[Any]) -> dict[str, tuple[int, bool]]:
        """``{pk_text: (version, deleted)}`` for the rows the target has seen."""
        raise NotImplementedError

    def fetch(self, model: type[models.Model], pks: Sequence[Any]) -> dict[str, dict[str, Any]]:
        """``{pk text: row}`` for the rows among ``pks`` the target holds."""
        raise NotImplementedError

    def scan(
        self, model: type[models.Model], segment: int = 0, segments: int = 1
    ) -> Iterator[dict[str, Any]]:
        """Every row the target holds, in ``segments`` disjoint parts read in parallel
        (a store that cannot split its scan accepts only ``segments=1``)."""
        raise NotImplementedError

    def setup(self, models_: Sequence[type[models.Model]]) -> list[str]:
        """Create what the target needs for these models where missing (``mirror_setup``);
        returns what it created."""
        return []

    def connected(self) -> bool:
        """False when the store cannot be reached at all (after a failed call), so live
        mirroring leaves it to replay for a while instead of waiting on it per write."""
        return True

    def describe(self) -> str:
        return type(self).__name__
