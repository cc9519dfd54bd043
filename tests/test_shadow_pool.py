"""A pool replaced after a settings change ends its threads and closes their connections."""

from __future__ import annotations

import threading

import pytest
from django.db import connections

from django_mirror.shadow.pool import get_pool, reset_pool
from tests.testapp.models import Author


@pytest.mark.django_db(transaction=True, databases=["default", "new"])
def test_a_replaced_pool_finishes_its_jobs_then_ends_its_threads():
    Author.objects.create(name="Ada")
    pool = get_pool()
    seen: list[str] = []
    queried = threading.Event()

    def read() -> None:  # opens this worker's connections to both stores
        seen.extend(
            f"{alias}:{Author.objects.using(alias).count()}" for alias in ("default", "new")
        )
        queried.set()

    assert pool.submit(read)
    assert queried.wait(10)
    pool.later(0.2, lambda: seen.append("re-check"))
    reset_pool()  # what a DJANGO_MIRROR settings change does
    assert get_pool() is not pool
    for thread in [*pool.threads, pool.timer]:
        thread.join(10)
        assert not thread.is_alive(), thread.name
    assert seen == ["default:1", "new:0", "re-check"]  # what it held was still done
    assert pool.jobs.empty() and pool.pending == 0
    connections.close_all()


@pytest.mark.django_db(transaction=True, databases=["default", "new"])
def test_stopping_the_service_drops_waiting_rechecks_and_closes_connections():
    """At the end of tests (``runtime.stop()``) nothing waits out a re-check's delay:
    the threads end within the timeout, their connections closed, so the test
    databases can be dropped (PostgreSQL refuses while a connection is open)."""
    from django_mirror.shadow import pool as shadow_pool

    pool = get_pool()
    queried = threading.Event()
    seen: list[str] = []

    def read() -> None:
        Author.objects.using("new").count()
        queried.set()

    assert pool.submit(read)
    assert queried.wait(10)
    pool.later(60.0, lambda: seen.append("re-check"))  # as RECHECK_DELAY x MAX_RECHECKS
    shadow_pool.service.stop(timeout=3.0)
    for thread in [*pool.threads, pool.timer]:
        assert not thread.is_alive(), thread.name
    assert seen == [] and pool.pending == 0
    shadow_pool.service.start()
