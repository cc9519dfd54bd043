"""Applying a batch of events to a database target, and the order its writes go in.

A batch goes in one transaction: versions claimed first, then rows deleted and upserted
in an order the target's foreign keys accept. A batch that fails as a whole is applied
one event at a time, so only the events the target refuses are dead-lettered.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import DataError, IntegrityError, models

from django_mirror.config import conf, graph
from django_mirror.core.events import UPSERT, Event, EventDecodeError, decode_value, pk_text
from django_mirror.targets.base import ApplyResult, latest_per_row
from django_mirror.targets.database import statements, versions
from django_mirror.targets.database.clashes import evict_unique_clashes
from django_mirror.targets.database.rows import UnknownModel, mirrored_model
from django_mirror.targets.database.store import DatabaseStore

#: What one bad event can raise (``OverflowError``: SQLite's driver, for a key past 64
#: bits). Anything else (a lost connection, a missing table) means the target itself is
#: broken: replay stops rather than dead-letter everything.
APPLY_ERRORS = (
    IntegrityError,
    DataError,
    EventDecodeError,
    UnknownModel,
    ValueError,
    TypeError,
    OverflowError,
)

#: Backends with ``INSERT ... ON CONFLICT ... DO UPDATE ... WHERE ... RETURNING``.
UPSERT_VENDORS = ("postgresql", "sqlite")

#: Passes over the events of a batch that failed as a whole (see ``_apply_each``).
FAILED_EVENT_PASSES = 3


@dataclass
class _Claim:
    """What one model's share of a batch won against the stored versions: the rows to
    upsert (with their keys, where the store needs them) and the keys to delete."""

    won: int
    rows: list[tuple[Any, ...]]
    upsert_pks: list[Any]
    delete_pks: list[Any]


class Applying(DatabaseStore):
    """``DatabaseTarget.apply``: events, newest per row, written where they win."""

    def apply(self, events: Sequence[Event]) -> ApplyResult:
        """Apply a batch in one transaction; on failure, one event at a time to isolate it."""
        latest = latest_per_row(events)
        result = ApplyResult(stale=len(events) - len(latest))
        try:
            with self._transaction():
                applied, stale = self._apply(latest)
        except APPLY_ERRORS:
            self._apply_each(sorted(latest, key=lambda e: e.version), result)
            return result
        for label, count in applied.items():
            result.count(label, count)
        result.stale += stale
        return result

    def _apply_each(self, events: list[Event], result: ApplyResult) -> None:
        """One event at a time, in version order; those refused are tried again while
        a pass gets any in: a row whose turn broke a key check (a parent deleted while
        a child still pointed at it) goes in once the rows it waited on have."""
        for _ in range(FAILED_EVENT_PASSES):
            before = len(result.failed)
            for event in events:
                self._apply_one(event, result)
            refused = result.failed[before:]
            if not refused or len(refused) == len(events):
                return
            del result.failed[before:]
            events = [event for event, _ in refused]
        result.failed += refused

    def _apply_one(self, event: Event, result: ApplyResult) -> None:
        """One event on its own; a unique clash with a stale row evicts that row, once."""
        error: Exception | None = None
        for evict in (False, True):
            try:
                with self._transaction():
                    if evict and evict_unique_clashes(self.alias, event):
                        result.stale += 1  # a newer row holds its unique value: superseded
                        return
                    applied, stale = self._apply([event])
            except APPLY_ERRORS as exc:
                error = exc
                if isinstance(exc, (EventDecodeError, UnknownModel)):
                    break
                continue
            for label, count in applied.items():
                result.count(label, count)
            result.stale += stale
            return
        result.failed.append((event, _redacted(event, f"{type(error).__name__}: {error}")))

    def _apply(self, events: Sequence[Event]) -> tuple[dict[str, int], int]:
        """Apply newest-per-row events inside the caller's transaction:
        (applied per model label, stale).

        Rows are written in an order the target's foreign keys accept, for a store that
        checks them (live mirroring; MariaDB checks each statement): every model's
        versions are claimed first, then rows are deleted child tables first, upserted
        parent tables first, and a table's deletes wait until after the upserts while a
        table referring to it has upserts (a child re-pointed by SET_NULL must let go of
        its parent before the parent goes).
        """
        by_label: dict[str, list[Event]] = defaultdict(list)
        for event in events:
            by_label[event.model].append(event)
        by_model: dict[type[models.Model], list[Event]] = defaultdict(list)
        for label, labelled in by_label.items():  # settings looked up per label, not per event
            by_model[mirrored_model(label)] += labelled
        locking = self.connection.vendor not in UPSERT_VENDORS
        claim = self._claim_locking if locking else self._claim_upserting
        claims = {model: claim(model, model_events) for model, model_events in by_model.items()}
        order = graph.parents_first(tuple(by_model))
        late: set[type[models.Model]] = set()
        if len(order) > 1:
            referring = graph.referrers(order)
            for model in reversed(order):  # children first, so a wait passes up the chain
                if any(claims[c].rows or c in late for c in referring[model]):
                    late.add(model)
        for model in reversed(order):
            if model not in late:
                statements.delete_rows(self.alias, model, claims[model].delete_pks)
        for model in order:
            if locking:
                self._write_rows_locking(model, claims[model])
            else:
                statements.upsert_rows(self.alias, model, claims[model].rows)
        for model in reversed(order):
            if model in late:
                statements.delete_rows(self.alias, model, claims[model].delete_pks)
        applied = {model._meta.label: claims[model].won for model in order}
        return applied, len(events) - sum(applied.values())

    def _claim_locking(self, model: type[models.Model], events: list[Event]) -> _Claim:
        """Portable: lock the stored versions and store the newer ones; rows held already
        are later updated in place, the others inserted."""
        label = model._meta.label_lower
        current = versions.read(self.alias, label, [e.key[1] for e in events], lock=True)
        fresh = [e for e in events if e.version > current.get(e.key[1], (-1, False))[0]]
        if not fresh:
            return _Claim(0, [], [], [])
        # Decode first: a bad event must fail before anything is written.
        upserts = [e for e in fresh if e.op == UPSERT]
        rows = self._spec(model).event_rows(model, upserts)
        versions.store_events(self.alias, label, fresh, current)
        return _Claim(
            len(fresh), rows, [e.pk for e in upserts], [e.pk for e in fresh if e.op != UPSERT]
        )

    def _write_rows_locking(self, model: type[models.Model], claim: _Claim) -> None:
        """Rows held already are updated in place, so rows referring to them (an M2M
        table) keep their foreign keys valid where the checks stay on (live mirroring);
        the others are inserted."""
        if not claim.rows:
            return
        held = {pk_text(pk) for pk in statements.existing_pks(self.alias, model, claim.upsert_pks)}
        pk_index = [f.attname for f in model._meta.concrete_fields].index(model._meta.pk.attname)
        in_place = [pk_text(pk) in held for pk in claim.upsert_pks]
        statements.update_rows(
            self.alias, model, [r for r, h in zip(claim.rows, in_place, strict=True) if h], pk_index
        )
        statements.insert_rows(
            self.alias, model, [r for r, h in zip(claim.rows, in_place, strict=True) if not h]
        )

    def _claim_upserting(self, model: type[models.Model], events: list[Event]) -> _Claim:
        """PostgreSQL and SQLite: one conditional version upsert names the events that are
        newer than what the target holds; one row upsert and one delete apply them."""
        upserts = [e for e in events if e.op == UPSERT]
        deletes = [e for e in events if e.op != UPSERT]
        # Decoded first: a bad event fails before any write.
        rows = self._spec(model).event_rows(model, upserts)
        won = versions.claim(self.alias, model._meta.label_lower, upserts, deletes)
        if len(won) < len(events):
            rows = [row for row, e in zip(rows, upserts, strict=True) if e.key[1] in won]
        return _Claim(len(won), rows, [], [e.pk for e in deletes if e.key[1] in won])


def _redacted(event: Event, reason: str) -> str:
    """The reason with the model's ``redact_fields`` values hidden: database errors
    quote them (PostgreSQL's "Failing row contains", MySQL's "Duplicate entry")."""
    config = conf.config_for_label(event.model)
    if config is None or config.model is None or not isinstance(event.row, dict):
        return reason
    for f in config.model._meta.concrete_fields:
        if f.name in config.redact_fields or f.attname in config.redact_fields:
            try:
                value = str(decode_value(event.row.get(f.column)))
            except EventDecodeError:
                continue
            if event.row.get(f.column) not in (None, ""):
                reason = reason.replace(value, "<redacted>")
    return reason
