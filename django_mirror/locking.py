"""SQLite's write lock, taken at the start of a transaction that reads before it writes.

Two such transactions meeting on one SQLite file deadlock, and SQLite answers one of
them with "database is locked" at once instead of waiting. Writing first makes the
second wait (up to the connection's timeout) like any other writer.
"""

from __future__ import annotations

from django.db import connections


def write_lock_first(using: str, table: str) -> None:
    """On SQLite, inside a transaction: take the write lock with a write that changes
    nothing. Elsewhere a no-op (row locks order the writers)."""
    connection = connections[using]
    if connection.vendor != "sqlite":
        return
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {connection.ops.quote_name(table)} SET rowid = rowid WHERE 0 = 1")
