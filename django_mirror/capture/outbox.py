"""The outbox: captured events stored in the source database by the writing transaction.

One ``OutboxBatch`` row holds one :class:`Payload`, the ops of one ORM call or statement
on one model; it commits or rolls back with the write, and the relay ships it after.
Storing one happens on every captured write, so it skips the ORM and Django's cursor
wrapper, builds the JSON without walking what is already JSON, and hands one statement
to the driver.
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
        return (
            f'{{"tx":{encode_basestring(self.tx)},"ts":"{self.now.isoformat()}",'
            f'"source":{encode_basestring(self.source)},'
            f'"columns":{_columns_json(tuple(self.columns))},"gen":{int(self.gen)},'
            f'"ops":[{_ops_json(self.ops)}]}}'
        )


@functools.cache
def _columns_json(columns: tuple[str, ...]) -> str:
    return encode_json(columns)


def _ops_json(ops: list[str | list[Any]]) -> str:
    """The ops, comma-separated; those already JSON text go in as they are."""
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
    now = connection.ops.adapt_datetimefield_value(payload.now)
    rows = [(now, label, len(part.ops), part.to_json(), 0) for part in parts]
    if mirrored_live is None:  # the caller did not have the model's config at hand
        config = conf.config_for_label(label)
        mirrored_live = config is not None and config.live
    if connection.connection is None:
        connection.ensure_connection()
    returning = mirrored_live and connection.vendor == "postgresql"
    sql = _insert_sql(using, connection.vendor, returning)
    # Django's exception classes, as the ORM's own statements raise them.
    with connection.wrap_database_errors:
        cursor = _driver_cursor(connection)
        try:
            for row in rows:  # more than one only past MAX_BATCH_EVENTS events
                cursor.execute(sql, row)
                if mirrored_live:
                    batch_id = cursor.fetchone()[0] if returning else cursor.lastrowid
                    stored = json.loads(row[3])  # what the relay will read back
                    for hook in live_batch_hooks:
                        hook(connection, (batch_id, label, stored))
                    _remember_versions(using, label, batch_id, stored)
        finally:
            cursor.close()


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
