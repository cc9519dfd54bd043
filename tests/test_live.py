"""Live mirroring (phase ``mirror``): committed writes reach the target at once, under
replay's version rules, and a target failure never fails the request."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import DatabaseError, connections, models, transaction
from django.db.models import F
from django.test import Client

from django_mirror import paused
from django_mirror.live import apply
from django_mirror.models import MismatchRecord, OutboxBatch, RowVersion
from tests.conftest import (
    assert_mirrored,
    both_databases,
    drain_and_replay,
    in_thread,
    mirroring,
    rows,
    target_down,
)
from tests.testapp.models import Author, Book, Counter, Tag


@both_databases
def test_every_committed_write_reaches_the_target_before_any_relay_or_replay(statsd):
    with mirroring():
        author = Author.objects.create(name="ada")
        book = Book.objects.create(author=author, title="notes", isbn="123")
        tag = Tag.objects.create(name="math")
        book.tags.add(tag)
        Book.objects.filter(pk=book.pk).update(pages=F("pages") + 10)
        Counter.objects.bulk_create([Counter(name=f"c{i}") for i in range(5)])
        Counter.objects.filter(name="c0").delete()
        with transaction.atomic():
            Author.objects.create(name="rolled back")
            transaction.set_rollback(True)
        assert_mirrored(Author, Book, Tag, Counter, Book.tags.through)
        assert rows(Book, "new")[book.pk]["pages"] == 10
        assert not rows(Counter, "new").keys() & {"c0"}
        # The outbox still holds everything for the stream: replay is the backstop.
        assert OutboxBatch.objects.count() > 0
        versions = RowVersion.objects.using("new").filter(model="testapp.counter", deleted=True)
        assert versions.count() == 1
    lines = statsd.lines()
    assert statsd.total(lines, "django_mirror.write.applied.testapp_counter") == 6
    assert statsd.total(lines, "django_mirror.write.mismatch.testapp_author") == 0


@both_databases
def test_replaying_the_stream_after_live_writes_changes_nothing(kinesis):
    with mirroring():
        authors = [Author.objects.create(name=f"a{i}") for i in range(10)]
        for author in authors[:5]:
            author.name += "!"
            author.save()
        Author.objects.filter(pk__in=[a.pk for a in authors[5:]]).delete()
        before = rows(Author, "new")
        stats = drain_and_replay()
        assert stats.applied == 0  # every event was already applied live: all stale
        assert rows(Author, "new") == before
        assert_mirrored(Author)


@both_databases
def test_target_down_during_a_request_returns_200_records_and_replay_heals(kinesis, statsd):
    client = Client(raise_request_exception=True)
    with mirroring(), target_down():
        response = client.post("/authors/", {"name": "while down"})
        assert response.status_code == 200
    pk = response.json()["pk"]
    assert Author.objects.filter(pk=pk).exists()
    assert not Author.objects.using("new").filter(pk=pk).exists()
    record = MismatchRecord.objects.get(kind="write")
    assert (record.model, record.pk_value, record.request_path) == (
        "testapp.Author",
        str(pk),
        "/authors/",
    )
    assert record.status == MismatchRecord.Status.SUSPECTED
    assert record.diff["op"] == "upsert" and "error" in record.diff
    assert statsd.total(statsd.lines(), "django_mirror.write.mismatch.testapp_author") == 1
    assert apply.resolve_healed() == 0  # the target has not got the row yet
    record.refresh_from_db()
    assert record.status == MismatchRecord.Status.SUSPECTED
    with mirroring():
        drain_and_replay()
        assert_mirrored(Author)
    # Replay applied the row: it resolves the record on its own, nobody has to.
    record.refresh_from_db()
    assert record.status == MismatchRecord.Status.RESOLVED
    assert statsd.total(statsd.lines(), "django_mirror.write.healed") == 1


@contextmanager
def table_renamed(model: type[models.Model], alias: str = "new") -> Iterator[None]:
    """The target without the model's table: every write to it is refused."""
    table = model._meta.db_table
    qn = connections[alias].ops.quote_name
    with connections[alias].cursor() as cursor:
        cursor.execute(f"ALTER TABLE {qn(table)} RENAME TO {qn(table + '_away')}")
    try:
        yield
    finally:
        with connections[alias].cursor() as cursor:
            cursor.execute(f"ALTER TABLE {qn(table + '_away')} RENAME TO {qn(table)}")


@both_databases
def test_a_write_the_target_refuses_is_recorded_without_failing_the_write(kinesis):
    with mirroring(), table_renamed(Tag):
        tag = Tag.objects.create(name="refused")  # the source write succeeds
        Author.objects.create(name="unaffected")  # other models still mirror live
    assert Tag.objects.get(pk=tag.pk).name == "refused"
    record = MismatchRecord.objects.get(kind="write")
    assert (record.model, record.pk_value) == ("testapp.Tag", str(tag.pk))
    assert Author.objects.using("new").filter(name="unaffected").exists()
    with mirroring():
        drain_and_replay()
        assert_mirrored(Tag, Author)


@both_databases
def test_live_writes_from_racing_transactions_converge_without_replay():
    """Writers commit in one order and apply live in another: versions sort it out."""
    if connections["default"].vendor == "sqlite":
        writers, rounds = 2, 40  # SQLite serialises writers; still interleaves applies
    else:
        writers, rounds = 6, 60
    with paused():
        counters = Counter.objects.bulk_create([Counter(name=f"c{i}") for i in range(5)])
        Counter.objects.using("new").bulk_create([Counter(pk=c.pk, name=c.name) for c in counters])
    errors: list[BaseException] = []
    barrier = threading.Barrier(writers)

    def write(seed: int) -> None:
        rng = random.Random(seed)
        barrier.wait()
        for _ in range(rounds):
            name = f"c{rng.randrange(5)}"
            try:
                with transaction.atomic():
                    Counter.objects.filter(name=name).update(value=F("value") + 1)
            except DatabaseError:  # SQLite "database is locked" under contention
                continue

    with mirroring():
        threads = [in_thread(lambda s=seed: write(s), errors) for seed in range(writers)]
        for thread in threads:
            thread.join(120)
        assert not errors, errors
        assert sum(Counter.objects.values_list("value", flat=True)) > 0
        assert_mirrored(Counter)
    assert not MismatchRecord.objects.filter(kind="write").exists()


@pytest.mark.django_db(databases=["default", "new"], transaction=True)
def test_phase_capture_applies_nothing_live():
    Author.objects.create(name="only captured")
    assert not Author.objects.using("new").exists()


@both_databases
def test_a_down_target_is_left_to_replay_for_a_while_and_reported_once(kinesis, statsd):
    from tests.test_shadow import RecordingTransport, sentry_recording

    with sentry_recording() as sentry, mirroring():
        with target_down():
            first = Author.objects.create(name="fails")
        second = Author.objects.create(name="deferred")  # target back, but not tried yet
        assert not Author.objects.using("new").filter(pk=second.pk).exists()
        records = MismatchRecord.objects.filter(kind="write").order_by("pk")
        assert [r.pk_value for r in records] == [str(first.pk), str(second.pk)]
        assert "left to replay" in records[1].diff["error"]
        [event] = sentry.events()
        assert event["fingerprint"] == [
            "django-mirror",
            "write",
            "testapp.Author",
            "OperationalError",
        ]
        assert isinstance(sentry, RecordingTransport)
        drain_and_replay()
        assert_mirrored(Author)
    lines = statsd.lines()
    assert statsd.total(lines, "django_mirror.write.deferred.testapp_author") == 1
    assert statsd.total(lines, "django_mirror.write.mismatch.testapp_author") == 2


@both_databases
def test_a_rolled_back_savepoint_reaches_the_target_no_more_than_the_source():
    class Rollback(Exception):
        pass

    with mirroring():
        with transaction.atomic():
            kept = Author.objects.create(name="kept")
            try:
                with transaction.atomic():
                    Author.objects.create(name="ghost")
                    Author.objects.filter(pk=kept.pk).update(name="ghostly rename")
                    raise Rollback
            except Rollback:
                pass
        reused = Author.objects.create(name="after")  # may take the ghost's key
        assert_mirrored(Author)
        assert not Author.objects.using("new").filter(name__startswith="ghost").exists()
        assert Author.objects.using("new").get(pk=reused.pk).name == "after"
