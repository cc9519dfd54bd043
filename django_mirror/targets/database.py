"""A ``DATABASES`` alias as target: same tables as the source, plus ``RowVersion``.

Writes go through the database driver in batches (``executemany``) rather than
model instances: replay is a bulk loader, and Django's per-object machinery would
cost more than the database does.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import operator
import re
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import DataError, IntegrityError, connections, models, transaction

from django_mirror.config import conf, graph
from django_mirror.core import images, scoped
from django_mirror.core.batching import chunks, keys_per_statement, rows_per_statement
from django_mirror.core.events import (
    UPSERT,
    Event,
    EventDecodeError,
    decode_column,
    decode_row,
    decode_value,
    pk_text,
    quote_value,
)
from django_mirror.core.keys import unique_sets
from django_mirror.core.locking import write_lock_first
from django_mirror.models import RowVersion
from django_mirror.targets.base import ApplyResult, CopyResult, Target, latest_per_row


class UnknownModel(LookupError):
    """An event names a model that is not mirrored here."""


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
#: Django 6.1 renamed ``savepoint()`` (deprecated there) to ``savepoint_create()``.
_savepoint_create = getattr(transaction, "savepoint_create", transaction.savepoint)

#: Bytes of binary ``COPY`` data handed to the driver at once by the copy's fast path.
COPY_BLOCK_BYTES = 128 * 1024


def _array_types(
    model: type[models.Model], columns: list[str], connection: Any
) -> list[str] | None:
    """Column types for ``unnest`` arrays, or None where arrays cannot carry the column.

    Length and precision modifiers are dropped: an explicit ``::varchar(20)`` cast would
    silently truncate a value the column must refuse (so that it is dead-lettered), while
    the assignment to the column still enforces them. Array columns are left to plain
    ``VALUES``, as ``unnest`` would flatten them.
    """
    by_column = {f.column: f for f in model._meta.concrete_fields}
    types = []
    for column in columns:
        db_type = by_column[column].db_type(connection)
        if not db_type or "[" in db_type:
            return None
        types.append(re.sub(r"\([^)]*\)", "", db_type).strip())
    return types


class _Missing:
    """A column an event's row image leaves out."""


_MISSING = _Missing()


@dataclass(frozen=True)
class _Column:
    """How one column of upsert events' row images becomes driver parameters."""

    name: str
    #: From a non-null Python value to the parameter; None: the value goes as it is.
    prepare: Callable[[Any], Any] | None
    #: The field's default, for a column the image leaves out.
    default: Callable[[], Any]
    #: From a non-null image value to the parameter (decoded, then prepared); None: the
    #: value goes as it is unless it is tagged (``{"$dec": ...}``). Made once from
    #: ``prepare``: it runs for every value replay applies.
    load: Callable[[Any], Any] | None
    #: ``load`` of a whole column at once, or None where it cannot do it.
    load_all: Callable[[Sequence[Any]], list[Any] | None] | None = None
    #: What a column whose values go as they are takes: the driver would store anything
    #: (SQLite keeps text in an integer column, and fails past 64 bits).
    accepts: _Accepts | None = None

    def prepared(self, value: Any) -> Any:
        """The parameter of a Python value."""
        return value if self.prepare is None or value is None else self.prepare(value)

    def fill(self) -> Any:
        """The parameter where the image leaves the column out."""
        return self.prepared(self.default())

    def convert(self, values: Sequence[Any]) -> Sequence[Any]:
        """The parameters of one column of many rows (``_MISSING`` where left out).

        Most columns need nothing done, which one pass over their types in C shows."""
        if self.load_all is not None and (loaded := self.load_all(values)) is not None:
            return loaded
        kinds = set(map(type, values))
        if self.load is not None and _Missing not in kinds:
            return [value if value is None else self.load(value) for value in values]
        if _Missing in kinds:
            values, kinds = [self._one(value) for value in values], None
        elif dict in kinds or list in kinds:
            values, kinds = [decode_value(value) for value in values], None
        if self.accepts is not None:
            self.accepts.check(self.name, values, kinds)
        return values

    def _one(self, value: Any) -> Any:
        if value is _MISSING:
            return self.fill()
        if self.load is None:
            return decode_value(value)
        return value if value is None else self.load(value)


@dataclass(frozen=True)
class _Accepts:
    """The Python types (None aside) a column takes as they are, and for integers the
    column's range: a value outside them is refused (its event dead-lettered)."""

    kinds: frozenset[type]
    expects: str
    bounds: tuple[int, int] | None = None

    def check(self, column: str, values: Sequence[Any], kinds: set[type] | None) -> None:
        """Refuse the column's values unless all fit: a pass over their types and, for
        integers, a ``min`` and a ``max``, all in C."""
        kinds = set(map(type, values)) if kinds is None else set(kinds)
        nulls = type(None) in kinds
        kinds.discard(type(None))
        if not kinds <= self.kinds:
            bad = next(v for v in values if v is not None and type(v) not in self.kinds)
            raise TypeError(
                f"column {column!r} expects {self.expects}, "
                f"not {type(bad).__name__} {quote_value(bad)}"
            )
        if self.bounds is None or int not in kinds:
            return
        ints = values if kinds == {int} and not nulls else [v for v in values if type(v) is int]
        low, high = self.bounds
        if min(ints) < low or max(ints) > high:
            bad = next(v for v in ints if not low <= v <= high)
            raise ValueError(
                f"{quote_value(bad)} is out of range for column {column!r} ({low} to {high})"
            )


def _accepts(field: models.Field, connection: Any) -> _Accepts | None:
    """What a column whose values pass unchanged takes; None for the others, whose
    values their field prepares (and checks)."""
    if not images.passes_unchanged(field):
        return None
    while isinstance(field, models.ForeignKey):
        field = field.target_field
    if isinstance(field, models.BooleanField):
        return _Accepts(frozenset({bool}), "a boolean")
    if isinstance(field, models.FloatField):
        return _Accepts(
            frozenset({float, int}), "a number", _int_range(connection, "BigIntegerField")
        )
    if isinstance(field, models.IntegerField):
        return _Accepts(
            frozenset({int}), "an integer", _int_range(connection, field.get_internal_type())
        )
    return _Accepts(frozenset({str}), "text")


def _int_range(connection: Any, internal_type: str) -> tuple[int, int]:
    """The range of an integer column; 64 bits where the backend does not say."""
    try:
        low, high = connection.ops.integer_field_range(internal_type)
    except (KeyError, TypeError, ValueError):
        low, high = None, None
    return (-(2**63) if low is None else low, 2**63 - 1 if high is None else high)


@dataclass(frozen=True)
class _RowSpec:
    columns: list[_Column]
    names: frozenset[str]
    #: The primary key's column, and how an event's pk becomes its Python value.
    pk: _Column
    pk_to_python: Callable[[Any], Any]
    #: Keys of this Python type are their own parameters (int keys).
    pk_plain: type | None
    #: Every column's value of a whole row image, in field order (two or more columns).
    whole: Callable[[dict[str, Any]], tuple[Any, ...]] | None


def _prepare(field: models.Field, connection: Any, value: Any) -> Any:
    return field.get_db_prep_save(value, connection=connection)


def _utc_text(value: dt.datetime) -> Any:
    """What Django's SQLite backend stores for an aware datetime on a UTC connection."""
    return str(value.astimezone(dt.UTC).replace(tzinfo=None))


def _preparer(field: models.Field, connection: Any) -> Any:
    """The driver conversion of one field's decoded values, or None when none is needed.

    Aware datetimes, the common case, skip Django's per-value checks on PostgreSQL
    (the driver adapts them) and on SQLite in UTC (text in Django's own format)."""
    if images.passes_unchanged(field):
        return None
    generic = functools.partial(_prepare, field, connection)
    if _stores_utc_text(field, connection):
        return lambda value: _utc_text(value) if value.tzinfo is not None else generic(value)
    if type(field) is models.DateTimeField and settings.USE_TZ:
        if connection.vendor == "postgresql":
            return lambda value: value if value.tzinfo is not None else generic(value)
    return generic


def _stores_utc_text(field: models.Field, connection: Any) -> bool:
    """Whether the column holds aware datetimes as Django's UTC text (SQLite in UTC)."""
    return (
        type(field) is models.DateTimeField
        and settings.USE_TZ
        and connection.vendor == "sqlite"
        and connection.timezone_name == "UTC"
    )


#: Encoded aware datetimes in UTC, one a line, as ``isoformat`` writes them (no fraction
#: when it is zero). Django's SQLite text differs in a space for the ``T`` and no offset.
_UTC_ISO = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-9]{2}:[0-9]{2}"
    r"(?:\.(?!0{6})[0-9]{6})?\+00:00"
)
_UTC_ISO_LINES = re.compile(rf"(?:{_UTC_ISO}\n)*{_UTC_ISO}")


def _utc_texts(values: Sequence[Any]) -> list[Any] | None:
    """Django's SQLite texts of a column of encoded UTC datetimes (and nulls), or None
    when some value is anything else.

    Parsing, converting and formatting each datetime costs more than all the rest of
    its row; cut from the events' own texts, joined, after one match of them all and a
    parse of each to check the dates, all in C, the texts are the same.
    """
    present = [value for value in values if value is not None] if None in values else values
    if set(map(type, present)) != {dict} or set(map(len, present)) != {1}:
        return None
    try:
        texts = list(map(operator.itemgetter("$dt"), present))
    except KeyError:
        return None
    if set(map(type, texts)) != {str}:
        return None
    joined = "\n".join(texts)
    if _UTC_ISO_LINES.fullmatch(joined) is None:
        return None
    try:
        deque(map(dt.datetime.fromisoformat, texts), maxlen=0)
    except ValueError:
        return None  # the value-by-value path says which and why
    cut = joined.replace("T", " ").replace("+00:00", "").split("\n")
    if present is values:
        return cut
    rest = iter(cut)
    return [None if value is None else next(rest) for value in values]


def _decoded_prepared(prepare: Callable[[Any], Any], field: models.Field, raw: Any) -> Any:
    value = decode_column(field, raw)
    return None if value is None else prepare(value)


def _bools_as_ints(values: Sequence[Any]) -> list[Any] | None:
    """A column of booleans (and nulls) as the 1s and 0s SQLite stores for them, or None
    when it holds anything else.

    The driver binds an int as it is, but looks for an adapter for each bool first,
    which costs several times the binding."""
    kinds = set(map(type, values))
    if not kinds <= {bool, type(None)}:
        return None
    return [value if value is None else int(value) for value in values]


def _column(field: models.Field, connection: Any) -> _Column:
    prepare = _preparer(field, connection)
    load_all = None
    if _stores_utc_text(field, connection):
        load_all = _utc_texts
    elif type(field) is models.BooleanField and connection.vendor == "sqlite":
        driver = connection.Database
        if (bool, driver.PrepareProtocol) not in driver.adapters:  # the user set none
            load_all = _bools_as_ints
    return _Column(
        field.column,
        prepare,
        field.get_default,
        None if prepare is None else functools.partial(_decoded_prepared, prepare, field),
        load_all,
        _accepts(field, connection),
    )


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


class DatabaseTarget(Target):
    """Mirror rows into the ``DATABASES`` alias ``alias``."""

    def __init__(self, alias: str, relax_foreign_keys: bool = True) -> None:
        self.alias = alias
        self.relaxes_foreign_keys = relax_foreign_keys
        self._specs: dict[type[models.Model], _RowSpec] = {}

    def describe(self) -> str:
        return f"database {self.alias!r}"

    @property
    def connection(self) -> Any:
        return connections[self.alias]

    def connected(self) -> bool:
        return self.connection.connection is not None

    def _transaction(self) -> AbstractContextManager[Any]:
        """A transaction on the target; replay's own (not ``live``) check no foreign keys
        in it, and leave the connection's settings as they were once it ends."""
        if self.relaxes_foreign_keys:
            return scoped.foreign_keys_off(self.alias)
        return transaction.atomic(using=self.alias)

    # --- reading ------------------------------------------------------------------------

    def versions(self, model_label: str, pks: Sequence[Any]) -> dict[str, tuple[int, bool]]:
        return self._versions(model_label.lower(), [pk_text(pk) for pk in pks], lock=False)

    def _versions(self, label: str, keys: list[str], lock: bool) -> dict[str, tuple[int, bool]]:
        found: dict[str, tuple[int, bool]] = {}
        for chunk in chunks(keys, keys_per_statement(self.alias)):
            qs = RowVersion.objects.using(self.alias).filter(model=label, pk_value__in=chunk)
            if lock and self.connection.features.has_select_for_update:
                qs = qs.select_for_update()
            for key, version, deleted in qs.values_list("pk_value", "version", "deleted"):
                found[key] = (version, deleted)
        return found

    def fetch(self, model: type[models.Model], pks: Sequence[Any]) -> dict[str, dict[str, Any]]:
        attnames = [f.attname for f in model._meta.concrete_fields]
        found: dict[str, dict[str, Any]] = {}
        for chunk in chunks(list(pks), keys_per_statement(self.alias)):
            qs = models.QuerySet(model=model, using=self.alias).filter(pk__in=chunk)
            for row in qs.values(*attnames):
                found[pk_text(row[model._meta.pk.attname])] = row
        return found

    def scan(
        self, model: type[models.Model], segment: int = 0, segments: int = 1
    ) -> Iterator[dict[str, Any]]:
        """In key order, all in segment 0 (the other segments are empty): a database is
        read in one ordered pass."""
        if segment != 0:
            return
        attnames = [f.attname for f in model._meta.concrete_fields]
        qs = models.QuerySet(model=model, using=self.alias).order_by("pk").values(*attnames)
        yield from qs.iterator(chunk_size=2000)

    # --- writing ------------------------------------------------------------------------

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
                    if evict and self._evict_unique_clashes(event):
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
        result.failed.append((event, self._redacted(event, f"{type(error).__name__}: {error}")))

    def _redacted(self, event: Event, reason: str) -> str:
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

    def _model(self, label: str) -> type[models.Model]:
        config = conf.config_for_label(label)
        if config is None or config.model is None:
            raise UnknownModel(f"{label} is not a mirrored model")
        return config.model

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
            by_model[self._model(label)] += labelled
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
                self._delete_rows(model, claims[model].delete_pks)
        for model in order:
            if locking:
                self._write_rows_locking(model, claims[model])
            else:
                self._upsert_rows(model, claims[model].rows)
        for model in reversed(order):
            if model in late:
                self._delete_rows(model, claims[model].delete_pks)
        applied = {model._meta.label: claims[model].won for model in order}
        return applied, len(events) - sum(applied.values())

    def _claim_locking(self, model: type[models.Model], events: list[Event]) -> _Claim:
        """Portable: lock the stored versions and store the newer ones; rows held already
        are later updated in place, the others inserted."""
        label = model._meta.label_lower
        current = self._versions(label, [e.key[1] for e in events], lock=True)
        fresh = [e for e in events if e.version > current.get(e.key[1], (-1, False))[0]]
        if not fresh:
            return _Claim(0, [], [], [])
        # Decode first: a bad event must fail before anything is written.
        upserts = [e for e in fresh if e.op == UPSERT]
        rows = self._rows(model, upserts)
        self._write_versions(label, fresh, current)
        return _Claim(
            len(fresh), rows, [e.pk for e in upserts], [e.pk for e in fresh if e.op != UPSERT]
        )

    def _write_rows_locking(self, model: type[models.Model], claim: _Claim) -> None:
        """Rows held already are updated in place, so rows referring to them (an M2M
        table) keep their foreign keys valid where the checks stay on (live mirroring);
        the others are inserted."""
        if not claim.rows:
            return
        held = {pk_text(pk) for pk in self._existing_pks(model, claim.upsert_pks)}
        pk_index = [f.attname for f in model._meta.concrete_fields].index(model._meta.pk.attname)
        in_place = [pk_text(pk) in held for pk in claim.upsert_pks]
        self._update_rows(
            model, [r for r, h in zip(claim.rows, in_place, strict=True) if h], pk_index
        )
        self._insert_rows(model, [r for r, h in zip(claim.rows, in_place, strict=True) if not h])

    def _claim_upserting(self, model: type[models.Model], events: list[Event]) -> _Claim:
        """PostgreSQL and SQLite: one conditional version upsert names the events that are
        newer than what the target holds; one row upsert and one delete apply them."""
        upserts = [e for e in events if e.op == UPSERT]
        deletes = [e for e in events if e.op != UPSERT]
        rows = self._rows(model, upserts)  # decoded first: a bad event fails before any write
        won = self._claim_versions(model._meta.label_lower, upserts, deletes)
        if len(won) < len(events):
            rows = [row for row, e in zip(rows, upserts, strict=True) if e.key[1] in won]
        return _Claim(len(won), rows, [], [e.pk for e in deletes if e.key[1] in won])

    def _claim_versions(self, label: str, upserts: list[Event], deletes: list[Event]) -> set[str]:
        """Store each event's version where it is newer than the stored one (or there is
        none); the pk texts of the events that did, and so are to be applied."""
        qn = self.connection.ops.quote_name
        table = qn(RowVersion._meta.db_table)
        version, deleted = qn("version"), qn("deleted")
        claim = (
            f"ON CONFLICT ({qn('model')}, {qn('pk_value')}) DO UPDATE SET "
            f"{version} = EXCLUDED.{version}, {deleted} = EXCLUDED.{deleted} "
            f"WHERE {table}.{version} < EXCLUDED.{version}"
        )
        if self.connection.vendor == "sqlite":
            return self._claim_versions_sqlite(label, upserts, deletes, claim)
        # In key order, as copy claims them: two writers of one set of keys then wait for
        # each other in one direction only, never in a deadlock.
        rows = sorted(
            [(label, e.key[1], e.version, False) for e in upserts]
            + [(label, e.key[1], e.version, True) for e in deletes]
        )
        found = self._insert_many(
            RowVersion,
            ["model", "pk_value", "version", "deleted"],
            rows,
            f"{claim} RETURNING {qn('pk_value')}",
        )
        return {key for (key,) in found}

    def _claim_versions_sqlite(
        self, label: str, upserts: list[Event], deletes: list[Event], claim: str
    ) -> set[str]:
        """SQLite: first without ``RETURNING``, which SQLite runs as a trigger per row that
        adds more than half to the claim's time. When it stored a version for every event,
        the rule, every event won (each is the only one of its row, and stores one row
        or none); otherwise that claim is undone and made again, naming the winners.

        One writer holds the whole file, so there is no order to keep. Upserts and
        deletes go apart, ``deleted`` written in the statement: a bool bound per row
        costs the driver an adapter look-up each, which adds a third to the time.
        """
        groups = [
            (tombstone, [(e.key[1], e.version) for e in events])
            for tombstone, events in ((False, upserts), (True, deletes))
        ]
        savepoint = _savepoint_create(self.alias)
        if self._claim_sqlite(label, groups, claim)[1] == len(upserts) + len(deletes):
            transaction.savepoint_commit(savepoint, self.alias)
            return {key for _, rows in groups for key, _ in rows}
        transaction.savepoint_rollback(savepoint, self.alias)
        qn = self.connection.ops.quote_name
        found = self._claim_sqlite(label, groups, f"{claim} RETURNING {qn('pk_value')}")[0]
        return {key for (key,) in found}

    def _claim_sqlite(
        self, label: str, groups: list[tuple[bool, list[tuple[str, int]]]], claim: str
    ) -> tuple[list[tuple[Any, ...]], int]:
        """Run the claim over ``(tombstone, [(pk text, version)])`` groups: what it
        returns, and how many versions it stored."""
        qn = self.connection.ops.quote_name
        columns = ", ".join(qn(c) for c in ("model", "pk_value", "version", "deleted"))
        found: list[tuple[Any, ...]] = []
        stored = 0
        for tombstone, rows in groups:
            if rows:
                returned, changed = self._sqlite_values(
                    f"INSERT INTO {qn(RowVersion._meta.db_table)} ({columns}) "
                    f"SELECT ?, column1, column2, {int(tombstone)} FROM (",
                    rows,
                    f") WHERE true {claim}",  # WHERE: SQLite's rule for an upsert from SELECT
                    fixed=[label],
                )
                found += returned
                stored += changed
        return found, stored

    def _upsert_rows(self, model: type[models.Model], rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        qn = self.connection.ops.quote_name
        pk = model._meta.pk
        others = [qn(f.column) for f in model._meta.concrete_fields if f is not pk]
        action = (
            f"DO UPDATE SET {', '.join(f'{c} = EXCLUDED.{c}' for c in others)}"
            if others
            else "DO NOTHING"
        )
        columns = [f.column for f in model._meta.concrete_fields]
        self._insert_many(model, columns, rows, f"ON CONFLICT ({qn(pk.column)}) {action}")

    def _insert_many(
        self,
        model: type[models.Model],
        columns: list[str],
        rows: Sequence[Sequence[Any]],
        tail: str,
    ) -> list[tuple[Any, ...]]:
        """``INSERT INTO table (columns) <rows> tail``, returning what ``tail`` returns.

        PostgreSQL gets one array per column through ``unnest``: a short statement the
        driver converts once, where thousands of placeholders would cost more than the
        insert. Elsewhere, multi-row ``VALUES`` within the parameter limit.
        """
        conn = self.connection
        qn = conn.ops.quote_name
        into = f"INSERT INTO {qn(model._meta.db_table)} ({', '.join(qn(c) for c in columns)})"
        if conn.vendor == "sqlite":
            return self._sqlite_values(into, rows, tail)[0]
        found: list[tuple[Any, ...]] = []
        with conn.cursor() as cursor:
            types = _array_types(model, columns, conn) if conn.vendor == "postgresql" else None
            if types is not None:
                arrays = ", ".join(f"%s::{t}[]" for t in types)
                for chunk in chunks(rows, 10_000):
                    cursor.execute(
                        f"{into} SELECT * FROM unnest({arrays}) {tail}",
                        [list(values) for values in zip(*chunk, strict=True)],
                    )
                    found.extend(cursor.fetchall() if "RETURNING" in tail else ())
                return found
            placeholders = f"({', '.join(['%s'] * len(columns))})"
            for chunk in chunks(rows, rows_per_statement(self.alias, len(columns))):
                cursor.execute(
                    f"{into} VALUES {', '.join([placeholders] * len(chunk))} {tail}",
                    [value for params in chunk for value in params],
                )
                found.extend(cursor.fetchall() if "RETURNING" in tail else ())
        return found

    def _sqlite_values(
        self,
        head: str,
        rows: Sequence[Sequence[Any]],
        tail: str,
        fixed: Sequence[Any] = (),
    ) -> tuple[list[tuple[Any, ...]], int]:
        """``head VALUES (?, ...), ... tail`` over ``rows``, in statements within SQLite's
        parameter limit, each with the ``fixed`` parameters first: what ``tail`` returns,
        and the rows the statements changed.

        Through the driver's own cursor, in its own ``?`` style: Django's cursor rewrites
        each ``%s`` with a regular expression, which on statements of a thousand
        parameters takes longer than SQLite takes to run them. Errors are Django's still.
        """
        conn = self.connection
        width = len(rows[0]) if rows else 1
        per = max(1, min(1000, (conn.features.max_query_params - len(fixed)) // width))
        marks = f"({', '.join(['?'] * width)})"
        found: list[tuple[Any, ...]] = []
        changed = 0
        conn.validate_no_broken_transaction()
        with conn.wrap_database_errors:
            cursor = conn.connection.cursor()
            try:
                for chunk in chunks(rows, per):
                    cursor.execute(
                        f"{head} VALUES {', '.join([marks] * len(chunk))} {tail}",
                        [*fixed, *itertools.chain.from_iterable(chunk)],
                    )
                    found += cursor.fetchall()
                    changed += cursor.rowcount
            finally:
                cursor.close()
        return found, changed

    def _rows(self, model: type[models.Model], upserts: Sequence[Event]) -> list[tuple[Any, ...]]:
        """Driver parameters of the upsert events' rows, decoded and converted.

        A column at a time: replay does this for every event, and a step per value costs
        more than the database's insert of it. A column the image leaves out gets the
        field's default; the key is the event's own.
        """
        if not upserts:
            return []
        spec = self._spec(model)
        images = [e.row or {} for e in upserts]
        raw: list[Sequence[Any]] | None
        try:
            # Whole images, the rule, are taken apart in C, and hold no other column.
            raw = list(zip(*map(spec.whole, images), strict=True)) if spec.whole else None
        except KeyError:
            raw = None
        if raw is None or set(map(len, images)) - {len(spec.names)}:
            if not spec.names.issuperset(itertools.chain.from_iterable(images)):
                unknown = sorted(set(itertools.chain.from_iterable(images)) - spec.names)
                raise EventDecodeError(f"{model._meta.label} has no column {unknown[0]!r}")
            raw = [[image.get(c.name, _MISSING) for image in images] for c in spec.columns]
        columns: list[Sequence[Any]] = []
        for column, values in zip(spec.columns, raw, strict=True):
            if column is spec.pk:
                pks = [e.pk for e in upserts]
                if spec.pk_plain is None or set(map(type, pks)) - {spec.pk_plain}:
                    pks = [column.prepared(spec.pk_to_python(pk)) for pk in pks]
                if column.accepts is not None:
                    column.accepts.check(column.name, pks, None)
                columns.append(pks)
            else:
                columns.append(column.convert(values))
        return list(zip(*columns, strict=True))

    def _params(self, model: type[models.Model], values: dict[str, Any]) -> list[Any]:
        """Driver parameters of a row read as ``{attname: value}``."""
        return [
            column.prepared(values[f.attname]) if f.attname in values else column.fill()
            for column, f in zip(
                self._spec(model).columns, model._meta.concrete_fields, strict=True
            )
        ]

    def _spec(self, model: type[models.Model]) -> _RowSpec:
        """How to turn a model's rows into driver parameters; built once per model, since
        replay needs it for every row."""
        spec = self._specs.get(model)
        if spec is None:
            conn = self.connection
            pk = model._meta.pk
            columns = [_column(f, conn) for f in model._meta.concrete_fields]
            pk_column = next(c for c in columns if c.name == pk.column)
            names = [c.name for c in columns]
            spec = _RowSpec(
                columns=columns,
                names=frozenset(names),
                pk=pk_column,
                pk_to_python=pk.to_python,
                # An int key, the common case, is its own parameter: no call for it.
                pk_plain=(
                    int
                    if pk_column.prepare is None
                    and type(pk).to_python is models.IntegerField.to_python
                    else None
                ),
                whole=operator.itemgetter(*names) if len(names) > 1 else None,
            )
            self._specs[model] = spec
        return spec

    # --- copy ---------------------------------------------------------------------------

    def copy(self, model: type[models.Model], rows: Sequence[dict[str, Any]]) -> CopyResult:
        """Insert the rows the target neither has nor holds a version or tombstone for.

        Copied rows get version 0: any captured write is newer and wins. A row that
        clashes with a unique value replay already applied changed in the source since
        it was read; its event is on its way, so it is skipped, not forced.
        """
        result = CopyResult()
        try:
            with self._transaction():
                self._copy(model, rows, result)
            return result
        except IntegrityError:
            result = CopyResult()
        for row in rows:
            try:
                with self._transaction():
                    self._copy(model, [row], result)
            except IntegrityError:
                result.clashed += 1
        return result

    def _copy(
        self, model: type[models.Model], rows: Sequence[dict[str, Any]], result: CopyResult
    ) -> None:
        label = model._meta.label_lower
        pk = model._meta.pk
        keys = [pk_text(row[pk.attname]) for row in rows]
        write_lock_first(self.alias, RowVersion._meta.db_table)  # reads, then inserts
        held = self._versions(label, keys, lock=False)
        present = {
            pk_text(value) for value in self._existing_pks(model, [r[pk.attname] for r in rows])
        }
        fresh = [
            row
            for row, key in zip(rows, keys, strict=True)
            if key not in held and key not in present
        ]
        # Versions before rows, in key order, as replay claims them: a concurrent replay
        # of one of these rows then either waits for this chunk or makes its version
        # insert fail (IntegrityError: the rows are retried one by one), never deadlocks.
        self.store_versions(label, sorted((pk_text(row[pk.attname]), 0, False) for row in fresh))
        self._insert_rows(model, [self._params(model, row) for row in fresh])
        result.copied += len(fresh)
        result.skipped += len(rows) - len(fresh)

    def copy_from_postgres(
        self, model: type[models.Model], source_alias: str, after: Any, limit: int
    ) -> tuple[CopyResult, Any, int] | None:
        """PostgreSQL to PostgreSQL: stream up to ``limit`` rows after key ``after`` with
        binary ``COPY``, and insert those the target neither holds nor holds a version or
        tombstone for.

        No version is written for the copied rows. Replay's delete of a row the target
        does not hold writes only a tombstone, which the chunk cannot see before replay
        commits; what meets the copy is replay's ``DELETE`` of the row, in the same
        transaction. So each chunk runs under ``SHARE ROW EXCLUSIVE`` on the table, which
        conflicts with every writer's lock on it (and with itself; readers go on): a
        writer that came first has committed, tombstones included, before the chunk
        looks; one that comes later waits for the chunk, and its ``DELETE`` then finds
        the copied row.

        Where the target holds no row past ``after`` and no version of the model at all
        (a copy run before replay), the rows stream straight into the table; otherwise
        into a scratch table, from which the held ones are dropped before the insert.

        Returns the result, the chunk's last key and the rows read; None when this path
        does not apply (other databases, excluded fields) or a row clashed with a unique
        value, so the caller copies the chunk the portable way.
        """
        source = connections[source_alias]
        target = self.connection
        config = conf.model_config(model)
        if source.vendor != "postgresql" or target.vendor != "postgresql":
            return None
        if config is not None and config.exclude_fields:
            return None
        qn = target.ops.quote_name
        table, pk = qn(model._meta.db_table), qn(model._meta.pk.column)
        columns = ", ".join(qn(f.column) for f in model._meta.concrete_fields)
        past = f"{pk} > %s" if after is not None else "true"
        params = [model._meta.pk.get_db_prep_value(after, source)] if after is not None else []
        rows = f"SELECT {columns} FROM {table} WHERE {past} ORDER BY {pk} LIMIT {int(limit)}"
        try:
            with self._transaction(), target.cursor() as out:
                out.execute(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")
                straight = self._holds_nothing_past(model, out, past, params)
                into = table if straight else "mirror_copy_chunk"
                if not straight:
                    out.execute(f"CREATE TEMP TABLE {into} (LIKE {table}) ON COMMIT DROP")
                read = self._pipe(source, rows, params, out, into, columns)
                if not read:
                    return CopyResult(), after, 0
                # Straight in, the chunk's rows are the only ones past ``after``.
                out.execute(
                    f"SELECT {pk} FROM {into} WHERE {past} ORDER BY {pk} DESC LIMIT 1", params
                )
                (last,) = out.fetchone()
                copied = read if straight else self._insert_unheld(model, out, params, last)
        except IntegrityError:
            return None
        return CopyResult(copied=copied, skipped=read - copied), last, read

    def _holds_nothing_past(
        self, model: type[models.Model], out: Any, past: str, params: list[Any]
    ) -> bool:
        """Whether the target holds no row matching ``past`` and no version of the model.

        Each is asked as the first key in index order: a plan that scans the table for a
        key past the chunk's start would read every row copied so far, only to find none.
        """
        qn = self.connection.ops.quote_name
        table, pk = qn(model._meta.db_table), qn(model._meta.pk.column)
        versions, key = qn(RowVersion._meta.db_table), qn("pk_value")
        out.execute(
            f"SELECT (SELECT {pk} FROM {table} WHERE {past} ORDER BY {pk} LIMIT 1) IS NULL "
            f"AND (SELECT {key} FROM {versions} WHERE {qn('model')} = %s ORDER BY {key} "
            "LIMIT 1) IS NULL",
            [*params, model._meta.label_lower],
        )
        return bool(out.fetchone()[0])

    def _pipe(
        self, source: Any, rows: str, params: list[Any], out: Any, table: str, columns: str
    ) -> int:
        """Stream the source query ``rows`` into ``table`` of the target with binary
        ``COPY``; the number of rows.

        The source sends a message per row; the target takes them in blocks, which saves
        a driver call per row (half the time of the stream).

        ``COPY`` goes through psycopg's own cursors: Django's debug cursor (``DEBUG =
        True``) takes no parameters for it. Their errors still become Django's.
        """
        with (
            source.wrap_database_errors,
            self.connection.wrap_database_errors,
            source.cursor() as read,
            read.cursor.copy(f"COPY ({rows}) TO STDOUT (FORMAT BINARY)", params) as rows_out,
            out.cursor.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)") as rows_in,
        ):
            block = bytearray()
            for data in rows_out:
                block += data
                if len(block) >= COPY_BLOCK_BYTES:
                    rows_in.write(block)
                    block = bytearray()
            rows_in.write(block)
        return out.rowcount  # type: ignore[no-any-return]

    def _insert_unheld(
        self, model: type[models.Model], out: Any, after: list[Any], last: Any
    ) -> int:
        """Insert the scratch table's rows but those the target holds, or holds a version
        or tombstone for (replay or an earlier copy got there first); how many.

        The held rows are deleted from the scratch table first, each kind in its own
        statement: in the insert's own statement, a plan scanning the target table would
        rescan what the statement inserts. The key range keeps the planner on the
        primary-key index, and the version lookup goes key by key through the version
        index, never through every version of the model.
        """
        qn = self.connection.ops.quote_name
        table, pk = qn(model._meta.db_table), qn(model._meta.pk.column)
        key = qn("pk_value")
        columns = ", ".join(qn(f.column) for f in model._meta.concrete_fields)
        out.execute(
            f"DELETE FROM mirror_copy_chunk chunk USING {table} t WHERE t.{pk} = chunk.{pk} "
            f"{f'AND t.{pk} > %s ' if after else ''}AND t.{pk} <= %s",
            [*after, last],
        )
        out.execute(
            f"DELETE FROM mirror_copy_chunk chunk USING {qn(RowVersion._meta.db_table)} v "
            f"WHERE v.{qn('model')} = %s AND v.{key} = chunk.{pk}::text "
            f"AND v.{key} = ANY(ARRAY(SELECT {pk}::text FROM mirror_copy_chunk))",
            [model._meta.label_lower],
        )
        out.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM mirror_copy_chunk")
        return out.rowcount  # type: ignore[no-any-return]

    def repair(
        self, model: type[models.Model], rows: Sequence[dict[str, Any]], pks: Sequence[Any]
    ) -> None:
        """Make the rows ``pks`` what the source holds (``rows``; absent ones are deleted).

        Versions replay applied are kept, so a newer event still wins and an older one is
        still skipped; rows without one get version 0, deleted ones a tombstone.
        """
        label = model._meta.label_lower
        pk = model._meta.pk
        keys = [pk_text(value) for value in pks]
        live = {pk_text(row[pk.attname]) for row in rows}
        with self._transaction():
            held = self._versions(label, keys, lock=True)
            self._delete_rows(model, list(pks))
            self._insert_rows(model, [self._params(model, row) for row in rows])
            self.store_versions(
                label,
                [(key, held.get(key, (0, False))[0], key not in live) for key in keys],
                replace=keys,
            )

    def _existing_pks(self, model: type[models.Model], pks: list[Any]) -> list[Any]:
        found: list[Any] = []
        for chunk in chunks(pks, keys_per_statement(self.alias)):
            qs = models.QuerySet(model=model, using=self.alias).filter(pk__in=chunk)
            found.extend(qs.values_list("pk", flat=True))
        return found

    def _delete_rows(self, model: type[models.Model], pks: list[Any]) -> None:
        if not pks:
            return
        qn = self.connection.ops.quote_name
        pk = model._meta.pk
        with self.connection.cursor() as cursor:
            for chunk in chunks(pks, keys_per_statement(self.alias)):
                cursor.execute(
                    f"DELETE FROM {qn(model._meta.db_table)} WHERE {qn(pk.column)} IN "
                    f"({', '.join(['%s'] * len(chunk))})",
                    [pk.get_db_prep_value(pk.to_python(v), self.connection) for v in chunk],
                )

    def _update_rows(
        self, model: type[models.Model], rows: Sequence[Sequence[Any]], pk_index: int
    ) -> None:
        """Rewrite held rows by primary key, every column (a clash with another row's
        unique value raises, as an insert would)."""
        others = [i for i in range(len(model._meta.concrete_fields)) if i != pk_index]
        if not rows or not others:
            return
        qn = self.connection.ops.quote_name
        fields = model._meta.concrete_fields
        sql = (
            f"UPDATE {qn(model._meta.db_table)} SET "
            f"{', '.join(f'{qn(fields[i].column)} = %s' for i in others)} "
            f"WHERE {qn(model._meta.pk.column)} = %s"
        )
        with self.connection.cursor() as cursor:
            cursor.executemany(sql, [[row[i] for i in others] + [row[pk_index]] for row in rows])

    def _insert_rows(self, model: type[models.Model], rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        qn = self.connection.ops.quote_name
        fields = model._meta.concrete_fields
        sql = (
            f"INSERT INTO {qn(model._meta.db_table)} "
            f"({', '.join(qn(f.column) for f in fields)}) "
            f"VALUES ({', '.join(['%s'] * len(fields))})"
        )
        with self.connection.cursor() as cursor:
            cursor.executemany(sql, rows)

    def _write_versions(
        self, label: str, events: list[Event], current: dict[str, tuple[int, bool]]
    ) -> None:
        self.store_versions(
            label,
            [(e.key[1], e.version, e.op != UPSERT) for e in events],
            replace=[e.key[1] for e in events if e.key[1] in current],
        )

    def store_versions(
        self, label: str, entries: list[tuple[str, int, bool]], replace: Sequence[str] = ()
    ) -> None:
        """Write ``(pk text, version, deleted)`` rows, first dropping those of ``replace``
        (delete + insert: portable, and two statements per batch)."""
        qn = self.connection.ops.quote_name
        table = qn(RowVersion._meta.db_table)
        with self.connection.cursor() as cursor:
            for chunk in chunks(replace, keys_per_statement(self.alias)):
                cursor.execute(
                    f"DELETE FROM {table} WHERE {qn('model')} = %s AND {qn('pk_value')} IN "
                    f"({', '.join(['%s'] * len(chunk))})",
                    [label, *chunk],
                )
            if entries:
                cursor.executemany(
                    f"INSERT INTO {table} ({qn('model')}, {qn('pk_value')}, {qn('version')}, "
                    f"{qn('deleted')}) VALUES (%s, %s, %s, %s)",
                    [(label, key, version, deleted) for key, version, deleted in entries],
                )

    def _evict_unique_clashes(self, event: Event) -> bool:
        """Delete target rows that hold this upsert's unique values under another key;
        True, deleting nothing, when one of them is newer than the event.

        The source's own unique constraint means that of two rows holding one value, the
        older one changed or went before the newer one took it; that change's event is
        still on its way (it keeps its version, so it lands). So an older row is evicted,
        and against a newer one this event is already superseded (shards interleave).
        """
        if event.op != UPSERT:
            return False
        model = self._model(event.model)
        values = decode_row(model, event.row or {})
        qs = models.QuerySet(model=model, using=self.alias)
        pks: list[Any] = []
        for names in unique_sets(model):
            lookup = {name: values.get(name) for name in names}
            if None in lookup.values():
                continue
            clashing = qs.filter(**lookup).exclude(pk=model._meta.pk.to_python(event.pk))
            pks.extend(clashing.values_list("pk", flat=True))
        if not pks:
            return False
        held = self._versions(model._meta.label_lower, [pk_text(pk) for pk in pks], lock=True)
        if any(version > event.version for version, _ in held.values()):
            return True
        self._delete_rows(model, pks)
        return False
