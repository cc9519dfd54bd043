"""The outbox: captured events stored in the source database by the writing transaction.

One ``OutboxBatch`` row holds one :class:`Payload`, the ops of one ORM call or statement
on one model; it commits or rolls back with the write, and the relay ships it after.
Storing one happens on every captured write, so it skips the ORM and Django's cursor
wrapper, builds the JSON without walking what is already JSON, and hands one statement
to the driver, through a cursor kept per driver connection. A single save's row
(:func:`write_op`) is built without a :class:`Payload`, and on psycopg 3 goes to libpq
in one call (``PGconn.exec_params``) inside the transaction the save's own statement
opened.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

from django_mirror.config import conf
from django_mirror.core.events import DELETE, decode_value, encode_json, event_dicts, pk_text

#: Events per outbox row; far below ``VERSION_STRIDE`` so versions never collide.
MAX_BATCH_EVENTS = 10_000


@dataclass(slots=True)
class Payload:
    """The events of one model's write in one ORM call or statement, before they are stored.

    ``ops`` are lists (``["u", pk, [values]]``, ``["d", pk]``, ``["c", key, [call]]``) or
    the JSON text of one, as a row imager writes it (``images.plan``): kept as text, so
    it is not built as lists first and encoded after.
    """

    tx: str
    now: dt.datetime
    source: str
    columns: Sequence[str]
    gen: int = 0
    ops: list[str | list[Any]] = field(default_factory=list)

    def to_json(self) -> str:
        """The stored form, ``{"tx", "ts", "source", "columns", "gen", "ops"}``, which
        ``events.event_dicts`` expands into wire events."""
        head_ = head(self.source, tuple(self.columns), int(self.gen))
        return _row_text(self.tx, self.now.isoformat(), head_, _ops_json(self.ops))


@functools.cache
def head(source: str, columns: tuple[str, ...], gen: int) -> str:
    """The stored form's middle, ``"source":..,"columns":[..],"gen":N,``: the same for
    every write of one model on one alias, so it is made once (see :func:`write_op`)."""
    return f'"source":{encode_basestring(source)},"columns":{encode_json(columns)},"gen":{gen},'


def _row_text(tx: str, ts: str, head_: str, ops: str) -> str:
    """A stored payload's JSON text from its parts, ``ops`` being the ops' JSON."""
    return f'{{"tx":{encode_basestring(tx)},"ts":"{ts}",{head_}"ops":[{ops}]}}'


def _ops_json(ops: list[str | list[Any]]) -> str:
    """The ops, comma-separated; those already JSON text go in as they are."""
    if len(ops) == 1:  # a single save: the common case
        op = ops[0]
        return op if type(op) is str else encode_json(op)
    if any(type(op) is str for op in ops):
        return ",".join(op if type(op) is str else encode_json(op) for op in ops)
    return encode_json(ops)[1:-1]


@functools.cache
def _insert_sql(using: str, vendor: str, returning: bool = False) -> str:
    """The outbox ``INSERT`` in the driver's own parameter style."""
    from django_mirror.models import OutboxBatch

    qn = connections[using].ops.quote_name
    columns = ", ".join(qn(c) for c in ("created_at", "model", "count", "payload", "attempts"))
    values = ", ".join(["?" if vendor == "sqlite" else "%s"] * 5)
    sql = f"INSERT INTO {qn(OutboxBatch._meta.db_table)} ({columns}) VALUES ({values})"
    return sql + " RETURNING id" if returning else sql


def _driver_cursor(connection: BaseDatabaseWrapper) -> Any:
    """A cursor of the driver itself; on psycopg 3 one that binds parameters on the server.

    Django's psycopg cursors interpolate parameters into the SQL text, which means
    escaping a whole payload (tens of KB for a ``bulk_create``) on every write. Server-side
    binding sends it as it is. Each statement goes unnamed, never prepared, so the outbox
    write stays safe behind PgBouncer's transaction pooling.
    """
    raw = connection.connection
    if connection.vendor == "postgresql":
        psycopg = _psycopg()
        if psycopg is not None and isinstance(raw, psycopg.Connection):
            return _UnpreparedCursor()(raw)
    return raw.cursor()


def _db_datetime(connection: BaseDatabaseWrapper, value: dt.datetime) -> Any:
    """``connection.ops.adapt_datetimefield_value(value)``, with the usual cases inlined:
    PostgreSQL takes the datetime as it is, and SQLite the naive UTC text of an aware
    UTC one (the text Django writes when the connection's time zone is UTC)."""
    vendor = connection.vendor
    if vendor == "postgresql":
        return value
    if vendor == "sqlite" and value.tzinfo is dt.UTC and connection.timezone is dt.UTC:
        return str(value.replace(tzinfo=None))
    return connection.ops.adapt_datetimefield_value(value)


@functools.cache
def _psycopg() -> Any:
    """The psycopg 3 module, or None where only psycopg2 is installed."""
    try:
        import psycopg
    except ImportError:
        return None
    return psycopg


@functools.cache
def _UnpreparedCursor() -> type:  # noqa: N802 - a class, made on first use
    """psycopg 3's server-side binding cursor, each statement sent unnamed."""

    class UnpreparedCursor(_psycopg().Cursor):  # type: ignore[misc]
        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            kwargs["prepare"] = False
            return super().execute(query, params, **kwargs)

    return UnpreparedCursor


#: (outbox batch id, model label, payload) of one captured statement.
StoredBatch = tuple[int, str, dict[str, Any]]
#: Called inside the writing transaction with each new batch of a model mirrored live:
#: live mirroring listens (``apps.py`` subscribes it), so the outbox never calls up.
live_batch_hooks: list[Callable[[BaseDatabaseWrapper, StoredBatch], None]] = []


def write(
    connection: BaseDatabaseWrapper,
    label: str,
    payload: Payload,
    mirrored_live: bool | None = None,
) -> None:
    """Insert the payload's ops as outbox rows, in the connection's open transaction.

    For a model mirrored live, the new batch ids (which number the events' versions)
    are kept for the after-commit apply.
    """
    using = connection.alias
    ops = payload.ops
    if len(ops) <= MAX_BATCH_EVENTS:
        parts = [payload]
    else:
        parts = [
            dataclasses.replace(payload, ops=ops[start : start + MAX_BATCH_EVENTS])
            for start in range(0, len(ops), MAX_BATCH_EVENTS)
        ]
    now = _db_datetime(connection, payload.now)
    rows = [(now, label, len(part.ops), part.to_json(), 0) for part in parts]
    if mirrored_live is None:  # the caller did not have the model's config at hand
        config = conf.config_for_label(label)
        mirrored_live = config is not None and config.live
    if connection.connection is None:
        connection.ensure_connection()
    returning = mirrored_live and connection.vendor == "postgresql"
    sql = _insert_sql(using, connection.vendor, returning)
    try:
        cursor = _inserter(connection).cursor
        for row in rows:  # more than one only past MAX_BATCH_EVENTS events
            cursor.execute(sql, row)
            if mirrored_live:
                batch_id = cursor.fetchone()[0] if returning else cursor.lastrowid
                stored = json.loads(row[3])  # what the relay will read back
                for hook in live_batch_hooks:
                    hook(connection, (batch_id, label, stored))
                _remember_versions(using, label, batch_id, stored)
    except Exception:
        # Django's exception classes, as the ORM's own statements raise them (the
        # wrapper is entered only on failure: it costs a microsecond on every write).
        with connection.wrap_database_errors:
            raise


class _Inserter:
    """The outbox ``INSERT`` of one driver connection, made once per connection: its
    cursor, or on psycopg 3 the libpq connection itself, and its statement."""

    __slots__ = ("raw", "cursor", "sql", "pgconn", "native_sql")

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        self.raw = connection.connection
        self.cursor = _driver_cursor(connection)
        self.sql = _insert_sql(connection.alias, connection.vendor)
        self.pgconn = None
        self.native_sql = b""
        if connection.vendor == "postgresql" and type(self.cursor) is _UnpreparedCursor():
            self.pgconn = self.raw.pgconn
            self.native_sql = _native_insert_sql(connection.alias)

    def insert(
        self, connection: BaseDatabaseWrapper, now: dt.datetime, ts: str, label: str, text: str
    ) -> None:
        """One outbox row of one event, ``ts`` being ``now.isoformat()``."""
        pgconn = self.pgconn
        if (
            pgconn is not None
            # Only inside a transaction psycopg has begun (the write's own statement
            # did): on its own, this statement would commit by itself.
            and pgconn.transaction_status == _INTRANS
            and pgconn.pipeline_status == 0
            and pgconn.parameter_status(b"client_encoding") == b"UTF8"
            # libpq reads a text parameter up to its first NUL: JSON text has none, and
            # the cursor below refuses one as psycopg does.
            and "\x00" not in text
        ):
            # One libpq call: psycopg's cursor machinery costs more than a local round
            # trip here. Unnamed, text parameters typed by their columns, as the cursor
            # would send them.
            result = pgconn.exec_params(
                self.native_sql,
                [ts.encode(), label.encode(), b"1", text.encode(), b"0"],
                None,
            )
            if result.status != _COMMAND_OK:
                raise _psycopg().errors.error_from_result(result, encoding="utf-8")
            return
        self.cursor.execute(self.sql, (_db_datetime(connection, now), label, 1, text, 0))


#: ``pq.ExecStatus.COMMAND_OK`` and ``pq.TransactionStatus.INTRANS``.
_COMMAND_OK = 1
_INTRANS = 2


def _inserter(connection: BaseDatabaseWrapper) -> _Inserter:
    """The connection's inserter, made anew with its driver connection (a psycopg cursor
    costs several microseconds to make); kept on the connection wrapper."""
    inserter: _Inserter | None = connection.__dict__.get("_mirror_outbox_inserter")
    if inserter is None or inserter.raw is not connection.connection:
        inserter = _Inserter(connection)
        connection.__dict__["_mirror_outbox_inserter"] = inserter
    return inserter


@functools.cache
def _native_insert_sql(using: str) -> bytes:
    """The outbox ``INSERT`` with libpq's ``$n`` placeholders."""
    sql = _insert_sql(using, "postgresql")
    for n in range(1, 6):
        sql = sql.replace("%s", f"${n}", 1)
    return sql.encode()


def write_op(
    connection: BaseDatabaseWrapper,
    label: str,
    tx: str,
    head: str,
    op: str,
) -> None:
    """:func:`write` of a payload of one op already in JSON text (a row imager's, of a
    single ``save()``, or a repository call's) for a model not mirrored live, without
    making the payload: the same row, for the path every single save takes. ``head`` is
    :func:`head`'s for the payload's source, columns and generation."""
    now = timezone.now()
    ts = now.isoformat()
    text = _row_text(tx, ts, head, op)
    if connection.connection is None:
        connection.ensure_connection()
    try:
        _inserter(connection).insert(connection, now, ts, label, text)
    except Exception:
        with connection.wrap_database_errors:  # as in write()
            raise


def _remember_versions(using: str, label: str, batch_id: int, payload: dict[str, Any]) -> None:
    """Keep the versions of rows written on a store that events also flow into.

    Once a model is mirrored live, events can arrive from the other store too (the
    switch to ``promoted``, a rollback, replay catching up); a version kept beside each
    direct write lets those late events lose to it, as on any target.
    """
    from django_mirror.targets import database_target

    newest: dict[str, tuple[int, bool]] = {}
    for event in event_dicts(batch_id, label, payload):
        newest[pk_text(decode_value(event["pk"]))] = (event["version"], event["op"] == DELETE)
    database_target(using, live=True).store_versions(
        label.lower(),
        [(key, version, deleted) for key, (version, deleted) in newest.items()],
        replace=list(newest),
    )
