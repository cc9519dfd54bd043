"""A transaction of ours that loses a deadlock is retried whole, not failed."""

from __future__ import annotations

import threading

import pytest
from django.db import OperationalError, connection, transaction

from django_mirror.core.locking import lock_conflict, retrying
from tests.conftest import both_databases, in_thread
from tests.testapp.models import Counter


def _crossed_updates(
    first: str, second: str, both_locked: threading.Barrier, victim: bool = False
) -> None:
    """Lock ``first``, wait until the other transaction holds its first row, then ask for
    ``second``: two of these in opposite orders deadlock. PostgreSQL fails the one that
    looks for the deadlock first, the ``victim`` here."""
    with transaction.atomic():
        if victim and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL deadlock_timeout = '50ms'")
        Counter.objects.filter(name=first).update(value=1)
        both_locked.wait(timeout=10)
        Counter.objects.filter(name=second).update(value=2)


@both_databases
def test_a_deadlocked_transaction_is_retried_and_both_writers_finish():
    if connection.vendor == "sqlite":
        pytest.skip("SQLite has no row locks to deadlock on; its writers queue on the file")
    Counter.objects.bulk_create([Counter(name="a"), Counter(name="b")])
    both_locked = threading.Barrier(2)
    attempts: list[int] = []
    lost: list[BaseException] = []

    def mine() -> None:
        def attempt() -> None:
            attempts.append(1)
            # Only the first try meets the other writer; a retry runs alone.
            barrier = both_locked if len(attempts) == 1 else threading.Barrier(1)
            _crossed_updates("a", "b", barrier, victim=True)

        retrying(attempt, attempts=3)

    def theirs() -> None:
        try:
            _crossed_updates("b", "a", both_locked)
        except OperationalError as exc:
            assert lock_conflict(exc)
            lost.append(exc)

    errors: list[BaseException] = []
    threads = [in_thread(mine, errors), in_thread(theirs, errors)]
    for thread in threads:
        thread.join(30)
    assert errors == []
    # The database broke the deadlock by failing one of the two (ours, on PostgreSQL);
    # the retry finished ours, so its writes land.
    assert len(attempts) == (2 if not lost else 1)
    if connection.vendor == "postgresql":
        assert attempts == [1, 1] and not lost
    assert Counter.objects.get(name="b").value == 2
