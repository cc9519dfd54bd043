"""Connections the application uses keep their settings: the admin's dead-letter retry
and repair relax foreign keys for their own transaction only, and a shadow read's
statement timeout ends with its query (issue 12, item 4)."""

from __future__ import annotations

from typing import Any

from django.db import connections
from django.test import Client
from django.urls import reverse

from django_mirror import paused
from django_mirror.core.events import Event
from django_mirror.models import DeadLetter, MismatchRecord
from django_mirror.shadow import get_pool
from django_mirror.streams import KinesisStream
from tests.conftest import StatsdListener, both_databases, mirroring
from tests.testapp.models import Author, Book

#: A parent no store holds: the child applies only with foreign-key checks off.
MISSING_AUTHOR = 424242


def session_settings(alias: str) -> dict[str, Any]:
    """The settings django-mirror might change, as this thread's connection has them."""
    connection = connections[alias]
    if connection.vendor == "sqlite":
        queries = ["PRAGMA foreign_keys"]
    elif connection.vendor == "postgresql":
        queries = ["SHOW session_replication_role", "SHOW statement_timeout"]
    else:
        timeout = "max_statement_time" if connection.mysql_is_mariadb else "max_execution_time"
        queries = ["SELECT @@SESSION.foreign_key_checks", f"SELECT @@SESSION.{timeout}"]
    found = {}
    with connection.cursor() as cursor:
        for sql in queries:
            cursor.execute(sql)
            found[sql] = cursor.fetchone()[0]
    return found


class Unchanged:
    """This thread's connections to both stores, and their settings, before a request:
    ``check()`` says the same connections are still open, settings as they were."""

    def __init__(self) -> None:
        self.before = {}
        for alias in ("default", "new"):
            connections[alias].ensure_connection()
            self.before[alias] = (connections[alias].connection, session_settings(alias))

    def check(self) -> None:
        for alias, (raw, settings) in self.before.items():
            # The test client leaves connections open between requests, as CONN_MAX_AGE.
            assert connections[alias].connection is raw, f"{alias}: another connection"
            assert session_settings(alias) == settings, alias


def orphan_book_event(pk: int) -> bytes:
    image = {"id": pk, "author_id": MISSING_AUTHOR, "editor_id": None, "title": "t"}
    row = {**image, "pages": 1, "isbn": ""}
    return Event(model="testapp.Book", op="upsert", pk=pk, version=1, row=row).to_json()


@both_databases
def test_dead_letter_retry_leaves_the_request_connection_as_it_was(
    kinesis: KinesisStream, admin_client: Client
) -> None:
    """Retried as replay applies it, a row whose parent has not arrived yet goes in;
    the web worker's connections keep their checks."""
    letter = DeadLetter.objects.create(
        model="testapp.Book", pk_value="7", reason="parent missing", payload=orphan_book_event(7)
    )
    unchanged = Unchanged()
    response = admin_client.post(
        "/admin/django_mirror/deadletter/", {"action": "retry", "_selected_action": [letter.pk]}
    )
    assert response.status_code == 302
    letter.refresh_from_db()
    assert letter.resolved_at is not None, letter.reason
    assert Book.objects.using("new").get(pk=7).author_id == MISSING_AUTHOR
    unchanged.check()


@both_databases
def test_repair_leaves_the_request_connection_as_it_was(
    kinesis: KinesisStream, admin_client: Client
) -> None:
    """Repair writes a book before its author reaches the target, without leaving the
    worker's connection relaxed."""
    with paused():
        ada = Author.objects.create(name="Ada")
        book = Book.objects.create(author=ada, title="Notes")
    record = MismatchRecord.objects.create(
        kind=MismatchRecord.Kind.VERIFY, model="testapp.Book", pk_value=str(book.pk)
    )
    unchanged = Unchanged()
    response = admin_client.post(
        reverse("admin:django_mirror_mismatchrecord_changelist"),
        {"action": "repair", "index": "0", "_selected_action": [record.pk]},
    )
    assert response.status_code == 302
    record.refresh_from_db()
    assert record.status == MismatchRecord.Status.RESOLVED
    assert Book.objects.using("new").get(pk=book.pk).author_id == ada.pk
    assert not Author.objects.using("new").exists()
    unchanged.check()


@both_databases
def test_shadow_read_leaves_no_statement_timeout_behind(statsd: StatsdListener) -> None:
    """The one pool thread's connection to the target, used for the timed shadow query,
    has its own settings back once the read is done; the request's are untouched."""
    with paused():
        author = Author.objects.create(name="Ada")
        Author.objects.using("new").create(pk=author.pk, name="Ada")
    fresh = session_settings("new")
    unchanged = Unchanged()
    with mirroring({"testapp.Author": {"shadow_read_rate": 1.0}}, POOL_SIZE=1, TIMEOUT=3.0):
        assert Client().get(f"/authors/{author.pk}/").json() == {"name": "Ada"}
        pool = get_pool()
        assert pool.wait_idle(30)
        seen: dict[str, Any] = {}
        assert pool.submit(lambda: seen.update(session_settings("new")))
        assert pool.wait_idle(30)
    assert statsd.total(statsd.lines(), "django_mirror.read.compared.testapp_author") == 1
    assert seen == fresh
    unchanged.check()
