"""Session settings django-mirror needs, held for one transaction or one query only.

Replay, repair and shadow reads may run on a connection the application uses (an admin
action runs on the web worker's own, kept open by ``CONN_MAX_AGE``), so whatever they
change is put back before the connection is handed on: ``SET LOCAL`` where the database
has it, else the previous value is read first and restored afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import DatabaseError, connections, transaction

logger = logging.getLogger("django_mirror.targets")


def _value(connection: Any, sql: str) -> Any:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


def _execute(connection: Any, sql: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql)


@contextmanager
def _session_setting(connection: Any, read: str, write: str, value: float) -> Iterator[None]:
    """Set a numeric session variable (``write`` formats it) for the block, then put back
    what it was. A connection that cannot be put back is closed, never reused as it is."""
    previous = _value(connection, read)
    if previous == value:
        yield
        return
    _execute(connection, write.format(value))
    try:
        yield
    finally:
        try:
            _execute(connection, write.format(previous))
        except DatabaseError:
            connection.close()


@contextmanager
def foreign_keys_off(alias: str) -> Iterator[None]:
    """A transaction on ``alias`` in which the session checks no foreign keys.

    Replayed rows arrive in order per row, not across rows, so replay cannot let the
    target check them (``mirror_verify`` catches what a check would have). Inside a
    transaction the caller holds, checks stay on: that transaction is not ours to relax.
    """
    connection = connections[alias]
    connection.ensure_connection()
    if connection.in_atomic_block:
        with transaction.atomic(using=alias):
            yield
        return
    if connection.vendor == "postgresql":
        with transaction.atomic(using=alias):
            _replica_role_for_this_transaction(connection)
            yield
    elif connection.vendor == "sqlite":  # PRAGMA foreign_keys is ignored in a transaction
        with (
            _session_setting(connection, "PRAGMA foreign_keys", "PRAGMA foreign_keys = {}", 0),
            transaction.atomic(using=alias),
        ):
            yield
    elif connection.vendor == "mysql":
        with (
            _session_setting(
                connection,
                "SELECT @@SESSION.foreign_key_checks",
                "SET SESSION foreign_key_checks = {}",
                0,
            ),
            transaction.atomic(using=alias),
        ):
            yield
    else:
        with transaction.atomic(using=alias):
            yield


def _replica_role_for_this_transaction(connection: Any) -> None:
    """``SET LOCAL session_replication_role = replica``, which ends with the transaction.

    It needs a superuser (or, on PostgreSQL 15+, ``GRANT SET ON PARAMETER``); where the
    role lacks it, the first try, in a savepoint, says so once per connection, and checks
    stay on: rows referencing rows not yet replayed fail and are retried.
    """
    raw = connection.connection
    refused = getattr(connection, "_mirror_replica_refused", None)
    if refused is raw:
        return
    statement = "SET LOCAL session_replication_role = replica"
    if getattr(connection, "_mirror_replica_allowed", None) is raw:
        _execute(connection, statement)
        return
    try:
        with transaction.atomic(using=connection.alias):
            _execute(connection, statement)
    except DatabaseError as exc:
        connection._mirror_replica_refused = raw
        logger.warning(
            "django-mirror: could not turn off foreign-key checks on %r (%s); rows "
            "referencing rows not yet replayed will fail and be retried",
            connection.alias,
            exc,
        )
        return
    connection._mirror_replica_allowed = raw


@contextmanager
def statement_time_limited(alias: str, seconds: float) -> Iterator[None]:
    """Ask the database to cancel a query of the block running past ``seconds``, where it
    can (PostgreSQL, MariaDB, MySQL), for the block only."""
    connection = connections[alias]
    connection.ensure_connection()
    if connection.vendor == "postgresql":
        with transaction.atomic(using=alias):
            _execute(connection, f"SET LOCAL statement_timeout = {int(seconds * 1000)}")
            yield
    elif connection.vendor == "mysql" and connection.mysql_is_mariadb:
        with _session_setting(
            connection,
            "SELECT @@SESSION.max_statement_time",
            "SET SESSION max_statement_time = {}",
            round(seconds, 3),
        ):
            yield
    elif connection.vendor == "mysql":
        with _session_setting(
            connection,
            "SELECT @@SESSION.max_execution_time",
            "SET SESSION max_execution_time = {}",
            int(seconds * 1000),
        ):
            yield
    else:
        yield
