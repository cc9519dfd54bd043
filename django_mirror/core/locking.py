"""Lock conflicts between our writers and everyone else's, and how we live with them.

SQLite's write lock is taken at the start of a transaction that reads before it
writes: two such transactions meeting on one SQLite file deadlock, and SQLite answers
one of them with "database is locked" at once instead of waiting. Writing first makes
the second wait (up to the connection's timeout) like any other writer.

Elsewhere, writers racing on the same rows take row locks in different orders, and
the database breaks the deadlock by failing one transaction: a transaction of ours
that failed that way is retried whole.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import OperationalError, connections

T = TypeVar("T")

#: SQLSTATEs (PostgreSQL) and error numbers (MySQL/MariaDB) of lock conflicts:
#: deadlock, serialization failure, deadlock, lock wait timeout.
LOCK_CONFLICTS = {"40P01", "40001", 1213, 1205}


def lock_conflict(exc: Exception) -> bool:
    """The error is a deadlock or lock timeout: the failed transaction may be retried."""
    cause = exc.__cause__
    code = getattr(cause, "sqlstate", None) or (getattr(cause, "args", None) or [None])[0]
    return code in LOCK_CONFLICTS or "database is locked" in str(exc)


def retrying(transaction: Callable[[], T], attempts: int) -> T:
    """Run ``transaction`` (a function that commits or rolls back as a whole); after a
    lock conflict, again after a short random pause, up to ``attempts`` times in all."""
    for attempt in range(1, attempts):
        try:
            return transaction()
        except OperationalError as exc:
            if not lock_conflict(exc):
                raise
            time.sleep(random.uniform(0, 0.01 * 2**attempt))
    return transaction()


def shared_in_memory(using: str) -> bool:
    """An in-memory SQLite database (Django's test databases): the process's threads
    share it through a shared cache, where a table another connection uses is locked at
    once, with no timeout. A background thread of ours writing there would make the
    app's own statements fail ("database table is locked"), so ours leave it alone."""
    connection = connections[using]
    return connection.vendor == "sqlite" and connection.is_in_memory_db()


def defers_write_lock(using: str) -> bool:
    """SQLite in its default DEFERRED mode: a transaction takes the write lock only at
    its first write, and so fails at once if it read first and another writer got in."""
    connection = connections[using]
    if connection.vendor != "sqlite":
        return False
    mode = connection.settings_dict.get("OPTIONS", {}).get("transaction_mode") or "DEFERRED"
    return str(mode).upper() == "DEFERRED"


def write_lock_first(using: str, table: str) -> None:
    """On SQLite in DEFERRED mode, inside a transaction: take the write lock with a
    write that changes nothing. Elsewhere a no-op (IMMEDIATE transactions begin with
    the lock; row locks order the writers of other databases)."""
    if not defers_write_lock(using):
        return
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {connection.ops.quote_name(table)} SET rowid = rowid WHERE 0 = 1")
