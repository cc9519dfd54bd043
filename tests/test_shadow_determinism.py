"""Shadow reads of queries whose answer the database chooses (a slice without a total
ordering, ``order_by("?")``, ``distinct(*fields)``): never a confirmed mismatch for the
choice itself, while a row that really differs between the stores is still caught."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from django.db import connections, models
from django.db.models import Count, Exists, F, Max, OuterRef, Subquery

from django_mirror import paused
from django_mirror.models import MismatchRecord
from django_mirror.shadow import determinism, get_pool, reads, shadow_reads
from tests.conftest import both_databases, mirroring
from tests.test_shadow import RecordingTransport, sentry_recording
from tests.testapp.models import AllTypes, Author, Book, ShelfBook, Tag

SHADOWED = {"testapp.Author": {"shadow_read_rate": 1.0}}
ROWS = 40


@pytest.fixture
def sentry() -> Iterator[RecordingTransport]:
    with sentry_recording() as transport:
        yield transport


def settle() -> None:
    assert get_pool().wait_idle(60), "shadow reads did not finish"


def name(i: int) -> str:
    """Names fall as keys rise: a store reading by name meets the rows in reverse."""
    return f"n{99 - i:02d}"


@pytest.fixture
def divergent() -> Iterator[list[Author]]:
    """The same 40 authors on both stores, which answer ``filter(name__gte="n")[:5]``
    with different rows, as two databases may: the source reads its table in key order;
    the target got the rows in reverse order and has an index on ``name`` (PostgreSQL
    scans its heap in insertion order, SQLite and MariaDB read the covering index)."""
    index = models.Index(fields=["name"], name="shadow_test_author_name")
    with paused():
        authors = Author.objects.bulk_create([Author(name=name(i)) for i in range(ROWS)])
        Author.objects.using("new").bulk_create(
            [Author(pk=a.pk, name=a.name) for a in reversed(authors)]
        )
    with connections["new"].schema_editor() as editor:
        editor.add_index(Author, index)
    try:
        yield authors
    finally:
        with connections["new"].schema_editor() as editor:
            editor.remove_index(Author, index)


def picked(alias: str) -> list[int]:
    return [a.pk for a in Author.objects.using(alias).filter(name__gte="n")[:5]]


def count(statsd, metric: str, lines: list[str] | None = None) -> float:
    return statsd.total(lines or statsd.lines(), f"django_mirror.read.{metric}.testapp_author")


@both_databases
def test_an_unordered_slice_shadowed_1000_times_is_never_confirmed_and_a_tampered_row_is(
    divergent, statsd, sentry, caplog
):
    caplog.set_level(logging.INFO, logger="django_mirror.shadow")
    reads._shapes = reads._ShapeLog()  # what earlier tests logged is forgotten
    source_picks, target_picks = picked("default"), picked("new")
    assert set(source_picks).isdisjoint(target_picks), (source_picks, target_picks)
    names = {a.pk: a.name for a in divergent}
    with mirroring(SHADOWED):
        with shadow_reads(path="/customers/"):
            for _ in range(10):
                for _ in range(100):
                    list(Author.objects.filter(name__gte="n")[:5])
                settle()
        lines = statsd.lines()
        assert count(statsd, "not_comparable", lines) == 1000
        assert count(statsd, "mismatch", lines) == count(statsd, "suspected", lines) == 0
        assert count(statsd, "skipped", lines) == count(statsd, "target_errors", lines) == 0
        assert not MismatchRecord.objects.exists()
        # Logged with the query's shape, once a minute at most, never with its values.
        [logged] = [r.getMessage() for r in caplog.records if "not comparable" in r.getMessage()]
        assert "testapp.Author not comparable (slice with no total ordering): rows: SELECT" in (
            logged
        )
        assert "%s" in logged and "'n'" not in logged

        # Real divergences: a row only the source's answer holds (the target now sorts
        # it last), and one only the target's answer holds (changed on the source side,
        # behind capture's back). Each is read by key from the other store, and caught.
        only_source, only_target = source_picks[2], target_picks[2]
        Author.objects.using("new").filter(pk=only_source).update(name="nz-tampered")
        with paused():
            Author.objects.filter(pk=only_target).update(name=names[only_target] + "x")
        source_now, target_now = picked("default"), picked("new")
        assert only_source in source_now and only_source not in target_now
        assert only_target in target_now and only_target not in source_now
        with shadow_reads(path="/customers/"):
            list(Author.objects.filter(name__gte="n")[:5])
            settle()
    [record] = MismatchRecord.objects.all()
    assert (record.kind, record.status, record.request_path) == ("read", "confirmed", "/customers/")
    differences = {d["pk"]: d for d in record.diff["differences"]}
    assert set(differences) == {str(only_source), str(only_target)}
    assert differences[str(only_source)]["fields"] == {"name": [names[only_source], "nz-tampered"]}
    assert differences[str(only_target)]["fields"] == {
        "name": [names[only_target] + "x", names[only_target]]
    }
    assert record.diff["not_determined"] == "slice with no total ordering"
    assert set(record.diff["keys"]) == {str(pk) for pk in source_now + target_now}
    assert record.diff["rerun"]  # what the admin's Re-check runs again
    assert record.query.startswith("rows: SELECT") and "%s" in record.query
    [event] = sentry.events()
    assert sorted(event["extra"]["pks"]) == sorted([str(only_source), str(only_target)])


@both_databases
def test_values_of_an_unordered_slice_are_compared_by_their_keys(divergent, statsd):
    with mirroring(SHADOWED), shadow_reads():
        for _ in range(50):
            list(Author.objects.filter(name__gte="n").values("id", "name")[:5])
            list(Author.objects.filter(name__gte="n").values_list("name", "pk")[:5])
            list(Author.objects.filter(name__gte="n").values_list("name", flat=True)[:5])
        settle()
    assert count(statsd, "not_comparable") == 150
    assert not MismatchRecord.objects.exists()
    tampered = picked("default")[0]
    Author.objects.using("new").filter(pk=tampered).update(name="nz-tampered")
    with mirroring(SHADOWED), shadow_reads():
        list(Author.objects.filter(name__gte="n").values("id", "name")[:5])
        list(Author.objects.filter(name__gte="n").values_list("name", "pk")[:5])
        # Without the key there is nothing to read the rows by: not comparable, not caught.
        list(Author.objects.filter(name__gte="n").values_list("name", flat=True)[:5])
        settle()
    records = list(MismatchRecord.objects.all())
    assert len(records) == 2
    for record in records:
        assert record.status == "confirmed" and record.pk_value == str(tampered)
        assert record.diff["keys"] and record.diff["summary"]
        assert "nz-tampered" in str(record.target_value)
    assert count(statsd, "not_comparable") == 151


@both_databases
def test_random_order_first_latest_index_and_aggregates_of_slices_never_confirm(divergent, statsd):
    reads = [
        lambda: list(Author.objects.order_by("?")[:5]),
        lambda: Author.objects.filter(name__gte="n").order_by().first(),
        lambda: Author.objects.order_by("?").first(),
        lambda: Author.objects.filter(name__gte="n")[3],
        lambda: Author.objects.filter(name__gte="n")[:5].aggregate(Max("name")),
        lambda: list(Author.objects.order_by("?").values_list("name", flat=True)[:3]),
    ]
    with mirroring(SHADOWED), shadow_reads():
        for _ in range(30):
            for read in reads:
                read()
        settle()
    lines = statsd.lines()
    assert count(statsd, "mismatch", lines) == 0
    assert count(statsd, "not_comparable", lines) > 0
    assert count(statsd, "match", lines) + count(statsd, "not_comparable", lines) == 30 * len(reads)
    assert not MismatchRecord.objects.exists()


@both_databases
def test_answers_the_data_fixes_are_still_compared_whole(divergent, statsd):
    """A total ordering, a slice that was not filled, a count of a slice: compared as
    before, so a difference in which rows match is a mismatch."""
    last = divergent[-1].pk
    with paused():
        Author.objects.using("new").filter(pk=last).delete()
    with mirroring(SHADOWED), shadow_reads():
        list(Author.objects.order_by("name", "pk")[:5])  # names n60.. are the last keys
        list(Author.objects.filter(name__lte="n62")[:100])  # the slice holds every match
        Author.objects.filter(name__gte="n")[:100].count()
        Author.objects.get(pk=divergent[0].pk)  # matches
        settle()
    lines = statsd.lines()
    assert count(statsd, "mismatch", lines) == 3
    assert count(statsd, "match", lines) == 1
    assert count(statsd, "not_comparable", lines) == 0
    assert MismatchRecord.objects.filter(status="confirmed").count() == 3


def test_determinism_of_query_shapes() -> None:
    def of(qs: models.QuerySet, kind: str = "rows", returned: int | None = None) -> tuple:
        found = determinism.of(qs, kind, returned)
        return found.rows, found.order

    sliced = Author.objects.filter(name__gte="n")
    assert of(sliced[:5]) == (False, False)
    assert of(sliced[:5], returned=3) == (True, False)  # not filled: every match
    assert of(sliced[2:5], returned=1) == (False, False)  # an offset skips chosen rows
    assert of(sliced.order_by("name")[:5]) == (False, False)
    assert of(sliced.order_by("name", "pk")[:5]) == (True, True)
    assert of(sliced.order_by("-id")[2:5]) == (True, True)
    assert of(sliced.order_by("?")[:5]) == (False, False)
    assert of(sliced.order_by("?")) == (True, False)
    assert of(sliced.order_by("?", "pk")[:5]) == (False, False)
    assert of(sliced.order_by("pk", "?")[:5]) == (True, True)
    assert of(sliced.order_by(F("pk").desc())[:5]) == (True, True)
    assert of(sliced[:5], "count") == (True, True)
    assert of(sliced[:5], "exists") == (True, True)
    assert of(sliced[:5], "aggregate") == (False, False)
    assert of(sliced.order_by("pk")[:5], "aggregate") == (True, True)
    # Unique sets of non-null fields are total; a nullable unique one is not.
    assert of(Tag.objects.order_by("name")[:5]) == (True, True)
    assert of(ShelfBook.objects.order_by("shelf", "book")[:5]) == (True, True)
    assert of(AllTypes.objects.order_by("maybe")[:5]) == (False, False)
    assert of(Book.objects.order_by("pages")[:1]) == (False, False)  # first() of ties
    assert of(Book.objects.order_by("pages").values("title")) == (True, False)
    # A many-valued join repeats a key: values() rows then tie on it; instances do not.
    joined = Author.objects.filter(books__title="x").order_by("pk")
    assert of(joined[:3]) == (True, True)
    assert of(joined.values("name", "books__title")[:3]) == (False, False)
    # Subqueries: a slice the database chooses decides what the outer query returns.
    unordered = Book.objects.filter(author=OuterRef("pk")).values("title")[:1]
    assert of(Author.objects.annotate(t=Subquery(unordered))) == (False, False)
    assert of(Author.objects.filter(Exists(Book.objects.filter(author=OuterRef("pk"))[:1])))[0]
    assert of(Book.objects.filter(author__in=Author.objects.all()[:5]), "count")[0] is False
    ordered = Book.objects.filter(author=OuterRef("pk")).order_by("pk").values("title")[:1]
    assert of(Author.objects.annotate(t=Subquery(ordered)).order_by("pk")) == (True, True)
    grouped = Book.objects.values("author").annotate(n=Count("pk")).order_by("author")
    assert of(grouped) == (True, False)


def test_distinct_on_fields_is_determined_by_a_total_ordering_only() -> None:
    books = Book.objects.order_by("author")
    assert of_rows(books.distinct("author")) is False
    assert of_rows(Book.objects.order_by("author_id", "pk").distinct("author_id")) is True
    assert of_rows(books.distinct("author"), "count") is True


def of_rows(qs: models.QuerySet, kind: str = "rows") -> bool:
    return determinism.of(qs, kind).rows


@both_databases
@pytest.mark.skipif(
    connections["default"].vendor != "postgresql", reason="distinct(*fields) is PostgreSQL's"
)
def test_distinct_on_a_partial_key_never_confirms(statsd):
    authors = [Author(pk=i, name=f"same-{i % 3}") for i in range(1, 31)]
    with paused():  # the target meets the rows in reverse order
        Author.objects.bulk_create(authors)
        Author.objects.using("new").bulk_create(list(reversed(authors)))
    with mirroring(SHADOWED), shadow_reads():
        for _ in range(20):
            list(Author.objects.order_by("name").distinct("name"))
            list(Author.objects.order_by("name").distinct("name").values("pk", "name"))
        settle()
    lines = statsd.lines()
    assert count(statsd, "not_comparable", lines) == 40  # each store kept other rows
    assert count(statsd, "mismatch", lines) == 0
    assert not MismatchRecord.objects.exists()
