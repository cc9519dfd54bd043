"""Shadow reads: sampled reads run again on the target off the request thread, are
compared, re-checked, and reported to the records, statsd and Sentry exactly once."""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sentry_sdk
from django.db import connections, transaction
from django.db.models import Count, F, Max, Sum
from django.db.models.functions import Upper
from django.test import Client
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from django_mirror import paused
from django_mirror.models import MismatchRecord
from django_mirror.shadow import get_pool, shadow_reads
from django_mirror.shadow.compare import Result, compare
from tests.conftest import both_databases, mirroring, target_down
from tests.testapp.models import Author, Book, Counter

SECRET_ISBN = "978-SECRET-4242"


class RecordingTransport(Transport):
    """sentry-sdk's own transport interface, keeping envelopes instead of sending them."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The events sent, or those of one mismatch kind ("read", "write")."""
        return [
            item.payload.json
            for envelope in self.envelopes
            for item in envelope.items
            if item.type == "event"
            and (kind is None or item.payload.json["fingerprint"][1] == kind)
        ]

    def raw(self) -> str:
        return "\n".join(
            envelope.serialize().decode(errors="replace") for envelope in self.envelopes
        )


#: The worst case for leaks, in the installed sentry-sdk's terms: personal data, SQL
#: parameters and stack frames' local variables all sent. Values must stay out even so.
SEND_EVERYTHING: dict[str, Any] = (
    {
        "data_collection": {
            "user_info": True,
            "database_query_data": True,
            "stack_frame_variables": True,
        }
    }
    if int(sentry_sdk.VERSION.split(".")[0]) >= 3
    else {"send_default_pii": True, "include_local_variables": True}
)


@contextmanager
def sentry_recording() -> Iterator[RecordingTransport]:
    """sentry-sdk initialised as a project would, its envelopes kept for the test."""
    transport = RecordingTransport()
    sentry_sdk.init(
        dsn="https://public@sentry.example.invalid/1",
        transport=transport,
        attach_stacktrace=True,
        default_integrations=True,
        **SEND_EVERYTHING,
    )
    try:
        yield transport
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.init()  # no DSN: inactive again


@pytest.fixture
def sentry() -> Iterator[RecordingTransport]:
    with sentry_recording() as transport:
        yield transport


def both(model: type, **fields: Any) -> Any:
    """The same row on source and target, written behind django-mirror's back."""
    with paused():
        obj = model.objects.create(**fields)
        model.objects.using("new").create(pk=obj.pk, **fields)
    return obj


def settle() -> None:
    assert get_pool().wait_idle(30), "shadow reads did not finish"


@both_databases
def test_injected_mismatch_yields_one_record_and_one_sentry_event_after_recheck(statsd, sentry):
    author = both(Author, name="ada")
    Author.objects.using("new").filter(pk=author.pk).update(name="eve")  # tampered target
    with mirroring({"testapp.Author": {"shadow_read_rate": 1.0}}):
        response = Client().get(f"/authors/{author.pk}/")
        assert response.json() == {"name": "ada"}  # always the source's answer
        settle()
    record = MismatchRecord.objects.get()
    assert (record.kind, record.status) == ("read", "confirmed")
    assert (record.model, record.pk_value, record.request_path) == (
        "testapp.Author",
        str(author.pk),
        f"/authors/{author.pk}/",
    )
    assert record.query.startswith("rows: SELECT")
    assert "%s" in record.query  # the shape, not the values
    [difference] = record.diff["differences"]
    assert difference["kind"] == "changed" and difference["fields"] == {"name": ["ada", "eve"]}
    [event] = sentry.events()
    assert event["fingerprint"] == ["django-mirror", "read", "testapp.Author", record.query]
    assert event["transaction"] == "django-mirror read mismatch"  # not a request's
    assert event["extra"]["fields"] == ["name"] and event["extra"]["pks"] == [str(author.pk)]
    lines = statsd.lines()
    assert statsd.total(lines, "django_mirror.read.suspected.testapp_author") == 1
    assert statsd.total(lines, "django_mirror.read.mismatch.testapp_author") == 1
    assert statsd.total(lines, "django_mirror.read.match.testapp_author") == 0


@both_databases
def test_one_sentry_issue_per_model_and_query_shape(sentry):
    authors = [both(Author, name=f"a{i}") for i in range(3)]
    Author.objects.using("new").update(name="tampered")
    with mirroring({"testapp.Author": {"shadow_read_rate": 1.0}}), shadow_reads():
        for author in authors:
            Author.objects.get(pk=author.pk)  # one shape, three rows
        list(Author.objects.filter(name__startswith="a"))  # another shape
        settle()
    fingerprints = [tuple(e["fingerprint"]) for e in sentry.events()]
    assert len(fingerprints) == 4 and len(set(fingerprints)) == 2
    assert MismatchRecord.objects.filter(kind="read").count() == 4


@both_databases
def test_every_read_shape_matches_when_the_stores_agree(statsd, sentry):
    author = both(Author, name="ada")
    for i in range(3):
        both(Book, author=author, title=f"t{i}", pages=i * 10)
    reads = {
        "iteration": lambda: list(Book.objects.all()),
        "get": lambda: Book.objects.get(title="t1"),
        "first": lambda: Book.objects.order_by("pages").first(),
        "last": lambda: Book.objects.order_by("pages").last(),
        "count": lambda: Book.objects.count(),
        "exists": lambda: Book.objects.filter(pages__gt=5).exists(),
        "values": lambda: list(Book.objects.values("title", "pages")),
        "values_list": lambda: list(Book.objects.values_list("title", flat=True)),
        "aggregate": lambda: Book.objects.aggregate(Sum("pages"), n=Count("pk")),
        "in_bulk": lambda: Book.objects.in_bulk(),
    }
    with mirroring({"testapp.Book": {"shadow_read_rate": 1.0}}), shadow_reads():
        for read in reads.values():
            read()
        settle()
    lines = statsd.lines()
    assert statsd.total(lines, "django_mirror.read.compared.testapp_book") == len(reads)
    assert statsd.total(lines, "django_mirror.read.match.testapp_book") == len(reads)
    assert not MismatchRecord.objects.exists()
    assert not sentry.events()


@both_databases
def test_each_read_shape_notices_a_difference(statsd):
    author = both(Author, name="ada")
    for i in range(3):
        both(Book, author=author, title=f"t{i}", pages=i * 10)
    with paused():
        Book.objects.using("new").filter(title="t2").update(pages=99)
        Book.objects.using("new").filter(title="t0").delete()
    reads = [
        lambda: list(Book.objects.all()),
        lambda: Book.objects.count(),
        lambda: list(Book.objects.order_by("title").values_list("pages", flat=True)),
        lambda: Book.objects.aggregate(Max("pages")),
        lambda: Book.objects.filter(title="t0").exists(),
    ]
    with mirroring({"testapp.Book": {"shadow_read_rate": 1.0}}), shadow_reads():
        for read in reads:
            read()
        settle()
    assert statsd.total(statsd.lines(), "django_mirror.read.mismatch.testapp_book") == len(reads)
    assert MismatchRecord.objects.filter(kind="read").count() == len(reads)


@both_databases
def test_a_difference_gone_by_the_recheck_is_not_reported(statsd, sentry):
    author = both(Author, name="ada")
    Author.objects.using("new").filter(pk=author.pk).update(name="eve")
    with mirroring({"testapp.Author": {"shadow_read_rate": 1.0}}, RECHECK_DELAY=0.5):
        with shadow_reads():
            Author.objects.get(pk=author.pk)
        pool = get_pool()
        for _ in range(500):  # until the first comparison has queued its re-check
            if pool.delayed:
                break
            threading.Event().wait(0.01)
        # The target catches up before the re-check runs.
        Author.objects.using("new").filter(pk=author.pk).update(name="ada")
        settle()
    lines = statsd.lines()
    assert statsd.total(lines, "django_mirror.read.suspected.testapp_author") == 1
    assert statsd.total(lines, "django_mirror.read.transient.testapp_author") == 1
    assert not MismatchRecord.objects.filter(kind="read").exists()
    assert not sentry.events()


@both_databases
def test_a_lagging_target_yields_no_mismatch(statsd, sentry):
    """Rows whose source version is newer than the target's do not count."""
    with mirroring({"testapp.Author": {"shadow_read_rate": 1.0}}):
        with target_down():
            fresh = Author.objects.create(name="written while the target was down")
        assert MismatchRecord.objects.filter(kind="write").count() == 1
        with shadow_reads():
            Author.objects.get(pk=fresh.pk)  # the target has not got it yet
            Author.objects.count()  # a count is off by it too
            settle()
    lines = statsd.lines()
    assert statsd.total(lines, "django_mirror.read.suspected.testapp_author") == 2
    assert statsd.total(lines, "django_mirror.read.lagging.testapp_author") == 2
    assert statsd.total(lines, "django_mirror.read.mismatch.testapp_author") == 0
    assert not MismatchRecord.objects.filter(kind="read").exists()
    assert not sentry.events("read") and len(sentry.events("write")) == 1


@both_databases
def test_a_healed_write_mismatch_is_resolved_and_differences_count_again(kinesis, statsd):
    from tests.conftest import drain_and_replay

    with mirroring({"testapp.Author": {"shadow_read_rate": 1.0}}):
        with target_down():
            fresh = Author.objects.create(name="late")
        drain_and_replay()  # replay heals the target
        Author.objects.using("new").filter(pk=fresh.pk).update(name="corrupted")
        with shadow_reads():
            Author.objects.get(pk=fresh.pk)
            settle()
    assert MismatchRecord.objects.get(kind="write").status == "resolved"
    assert MismatchRecord.objects.filter(kind="read").count() == 1


@both_databases
def test_target_down_during_a_read_request_returns_200_and_counts(statsd, sentry):
    author = both(Author, name="ada")
    with mirroring({"testapp.Author": {"shadow_read_rate": 1.0}}), target_down():
        response = Client(raise_request_exception=True).get(f"/authors/{author.pk}/")
        assert response.status_code == 200 and response.json() == {"name": "ada"}
        settle()
    assert statsd.total(statsd.lines(), "django_mirror.read.target_errors.testapp_author") == 1
    assert not MismatchRecord.objects.exists()
    assert not sentry.events()


@both_databases
def test_sampling_rate_is_honoured_within_statistical_bounds(statsd):
    author = both(Author, name="ada")
    requests, rate = 400, 0.25
    random.seed(20261126)
    client = Client()
    with mirroring({"testapp.Author": {"shadow_read_rate": rate}}):
        for _ in range(requests):
            client.get(f"/authors/{author.pk}/")
        settle()
    compared = statsd.total(statsd.lines(), "django_mirror.read.compared.testapp_author")
    expected, sd = requests * rate, (requests * rate * (1 - rate)) ** 0.5
    assert abs(compared - expected) < 4 * sd, (compared, expected)


@both_databases
def test_unsampled_models_and_phases_are_not_shadowed(statsd):
    author = both(Author, name="ada")
    both(Counter, name="c")
    with mirroring({"testapp.Author": {"shadow_read_rate": 1.0}}), shadow_reads():
        list(Counter.objects.all())  # phase mirror, rate 0
        settle()
    with shadow_reads(rate=1.0):
        Author.objects.get(pk=author.pk)  # phase capture: nothing to compare with yet
        settle()
    lines = statsd.lines()
    assert statsd.total(lines, "django_mirror.read.compared.testapp_counter") == 0
    assert statsd.total(lines, "django_mirror.read.compared.testapp_author") == 0


@both_databases
def test_reads_inside_a_transaction_with_uncommitted_mirrored_writes_are_skipped(statsd):
    with mirroring({"testapp.Author": {"shadow_read_rate": 1.0}}), shadow_reads():
        with transaction.atomic():
            author = Author.objects.create(name="not yet committed")
            Author.objects.get(pk=author.pk)
        Author.objects.get(pk=author.pk)  # after commit: compared, and it matches
        settle()
    lines = statsd.lines()
    assert statsd.total(lines, "django_mirror.read.uncommitted.testapp_author") == 1
    assert statsd.total(lines, "django_mirror.read.match.testapp_author") == 1


class TableLock:
    """Hold a lock on a target table from another connection, so shadow reads of it
    block, as behind a slow or stuck target."""

    def __init__(self, model: type, alias: str = "new") -> None:
        self.model, self.alias = model, alias
        self.locked = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._hold)

    def _hold(self) -> None:
        connection = connections[self.alias]
        if connection.vendor == "sqlite":  # readers wait only on an exclusive lock
            with sqlite3.connect(connection.settings_dict["NAME"]) as raw:
                raw.execute("BEGIN EXCLUSIVE")
                self.locked.set()
                self.release.wait(30)
                raw.rollback()
            return
        table = connection.ops.quote_name(self.model._meta.db_table)
        try:
            if connection.vendor == "mysql":  # InnoDB reads pass row locks: lock the table
                with connection.cursor() as cursor:
                    cursor.execute(f"LOCK TABLES {table} WRITE")
                    self.locked.set()
                    self.release.wait(30)
                    cursor.execute("UNLOCK TABLES")
                return
            with transaction.atomic(using=self.alias), connection.cursor() as cursor:
                cursor.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                self.locked.set()
                self.release.wait(30)
        finally:
            connection.close()

    def __enter__(self) -> TableLock:
        self.thread.start()
        assert self.locked.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.thread.join(30)


@both_databases
def test_a_full_pool_skips_and_counts_and_never_blocks_the_request(statsd):
    author = both(Author, name="ada")
    shadow = {"POOL_SIZE": 1, "QUEUE_SIZE": 2, "TIMEOUT": 0.3}
    with mirroring({"testapp.Author": {"shadow_read_rate": 1.0}}, **shadow), shadow_reads():
        pool = get_pool()
        with TableLock(Author):
            Author.objects.get(pk=author.pk)  # taken by the only worker, which blocks
            for _ in range(100):
                if pool.jobs.empty():
                    break
                threading.Event().wait(0.01)
            for _ in range(9):
                Author.objects.get(pk=author.pk)  # two queue up, seven are skipped
            threading.Event().wait(0.5)
        settle()
    lines = statsd.lines()
    assert statsd.total(lines, "django_mirror.read.skipped.testapp_author") == 7
    # The blocked read, and queued ones that waited past the timeout or were cancelled
    # by the database at it: timeouts all, none an error of the target.
    assert statsd.total(lines, "django_mirror.read.timeouts.testapp_author") >= 2
    assert statsd.total(lines, "django_mirror.read.target_errors.testapp_author") == 0


@both_databases
def test_redacted_values_appear_nowhere(sentry, caplog):
    caplog.set_level(logging.DEBUG)
    author = both(Author, name="ada")
    book = both(Book, author=author, title="t", isbn=SECRET_ISBN)
    with paused():
        Book.objects.using("new").filter(pk=book.pk).update(
            isbn=SECRET_ISBN + "-x", title="tampered"
        )
    with mirroring({"testapp.Book": {"shadow_read_rate": 1.0}}):
        assert Client().get(f"/books/{book.pk}/").status_code == 200
        with shadow_reads():
            list(Book.objects.filter(isbn=SECRET_ISBN).values_list("isbn", "title"))
            list(Book.objects.values("isbn"))
            Book.objects.aggregate(longest=Max("isbn"))
            list(Book.objects.values(code=F("isbn")))
            list(Book.objects.values_list(Upper("isbn")))
            list(Book.objects.annotate(x=F("isbn")).values_list("x"))
            list(Book.objects.values_list())
        settle()
    records = list(MismatchRecord.objects.values())
    assert len(records) == 8
    dumped = json.dumps(records, default=str)
    assert SECRET_ISBN not in dumped
    assert "tampered" in dumped  # the rest of the difference is there
    assert len(sentry.events()) == 8
    assert SECRET_ISBN not in sentry.raw()
    assert SECRET_ISBN not in caplog.text


@both_databases
def test_control_mode_compares_the_source_with_itself(statsd):
    author = both(Author, name="ada")
    Author.objects.using("new").filter(pk=author.pk).update(name="eve")
    with mirroring({"testapp.Author": {"shadow_read_rate": 1.0}}, CONTROL_RATE=1.0):
        with shadow_reads():
            Author.objects.get(pk=author.pk)
        settle()
    lines = statsd.lines()
    assert statsd.total(lines, "django_mirror.read.control.match.testapp_author") == 1
    assert statsd.total(lines, "django_mirror.read.match.testapp_author") == 0
    assert not MismatchRecord.objects.exists()  # the tampered target was never asked


def case_blind(source: list[dict[str, Any]], target: list[dict[str, Any]]) -> Any:
    """A ``compare`` callable: names that differ only in case are the same."""

    def names(rows: list[dict[str, Any]]) -> list[str]:
        return sorted(row["name"].lower() for row in rows)

    return None if names(source) == names(target) else {"names": [names(source), names(target)]}


@both_databases
def test_a_models_compare_callable_decides(statsd):
    ada, bob = both(Author, name="ada"), both(Author, name="bob")
    Author.objects.using("new").filter(pk=ada.pk).update(name="ADA")
    Author.objects.using("new").filter(pk=bob.pk).update(name="rob")
    options = {"shadow_read_rate": 1.0, "compare": "tests.test_shadow.case_blind"}
    with mirroring({"testapp.Author": options}), shadow_reads():
        Author.objects.get(pk=ada.pk)
        Author.objects.get(pk=bob.pk)
        settle()
    [record] = MismatchRecord.objects.all()
    assert record.diff["summary"] == {"names": [["bob"], ["rob"]]}


def test_unordered_results_compare_as_multisets_ordered_ones_in_order() -> None:
    from django_mirror.config import conf

    config = conf.config_for_label("testapp.Author")
    assert config is not None
    assert compare(config, Result(value=[1, 2]), Result(value=[1, 2])) is None
    assert compare(config, Result(value=[1, 2]), Result(value=[2, 1])) is not None
    unordered = [Result(value=sorted([2, 1, 1])), Result(value=sorted([1, 2, 1]))]
    assert compare(config, *unordered) is None


@both_databases
def test_the_admin_shows_read_and_write_mismatches_side_by_side(admin_client):
    book = both(Book, author=both(Author, name="ada"), title="t", isbn=SECRET_ISBN)
    with paused():
        Book.objects.using("new").filter(pk=book.pk).update(title="tampered", isbn="x")
    with mirroring({"testapp.Book": {"shadow_read_rate": 1.0}}):
        with shadow_reads(path="/books/"):
            Book.objects.get(pk=book.pk)
            settle()
        with target_down():
            Book.objects.filter(pk=book.pk).update(pages=7)
    read = MismatchRecord.objects.get(kind="read")
    write = MismatchRecord.objects.get(kind="write")
    page = admin_client.get(f"/admin/django_mirror/mismatchrecord/{read.pk}/change/")
    html = page.content.decode()
    assert page.status_code == 200
    assert "tampered" in html and "title" in html and "/books/" in html
    assert SECRET_ISBN not in html and "&lt;redacted&gt;" in html
    listing = admin_client.get("/admin/django_mirror/mismatchrecord/?kind=read").content.decode()
    assert (
        "changed: title, isbn" in listing or "changed: isbn, title" in listing
    )  # jsonb sorts keys
    page = admin_client.get(f"/admin/django_mirror/mismatchrecord/{write.pk}/change/")
    assert page.status_code == 200 and str(book.pk) in page.content.decode()


@both_databases
def test_mismatches_of_every_field_type_are_recorded_in_the_events_encoding():
    import datetime as dt
    from decimal import Decimal

    from tests.testapp.models import AllTypes

    row = both(
        AllTypes,
        moment=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        dec=Decimal("1.500000"),
        blob=b"\x00",
        ref=__import__("uuid").uuid4(),
        day=dt.date(2026, 1, 1),
    )
    with paused():
        AllTypes.objects.using("new").filter(pk=row.pk).update(
            moment=dt.datetime(2026, 1, 2, tzinfo=dt.UTC), dec=Decimal("2.500000")
        )
    with mirroring({"testapp.AllTypes": {"shadow_read_rate": 1.0}}), shadow_reads():
        AllTypes.objects.get(pk=row.pk)
        list(AllTypes.objects.values("moment", "dec"))
        settle()
    records = MismatchRecord.objects.filter(kind="read")
    assert records.count() == 2
    one_row = records.get(pk_value=str(row.pk), query__startswith="rows")
    assert one_row.diff["fields"]["dec"] == [{"$dec": "1.500000"}, {"$dec": "2.500000"}]
    assert one_row.source_value["moment"] == {"$dt": "2026-01-01T00:00:00+00:00"}


@both_databases
def test_locking_reads_are_compared_without_their_lock(statsd):
    author = both(Author, name="ada")
    with mirroring({"testapp.Author": {"shadow_read_rate": 1.0}}), shadow_reads():
        with transaction.atomic():
            Author.objects.select_for_update().get(pk=author.pk)
        settle()
    lines = statsd.lines()
    assert statsd.total(lines, "django_mirror.read.match.testapp_author") == 1
    assert statsd.total(lines, "django_mirror.read.target_errors.testapp_author") == 0


@both_databases
def test_the_dashboard_figures_do_not_depend_on_statsd():
    from django.test import override_settings

    from django_mirror.models import MetricWindow
    from django_mirror.observability import stats

    stats.flush()
    author = both(Author, name="ada")
    with override_settings(STATSD_HOST="no-such-host.invalid"):
        with mirroring({"testapp.Author": {"shadow_read_rate": 1.0}}), shadow_reads():
            Author.objects.get(pk=author.pk)
            settle()
        stats.flush()
    windows = MetricWindow.objects.filter(model="testapp.Author")
    assert sum(w.counts.get("read.match", 0) for w in windows) >= 1
    assert any(w.latency.get("target") for w in windows)
