"""Capture: every ORM write path to a mirrored model leaves exactly the right events in
the source's outbox, inside the writing transaction, and replay makes the target equal."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.apps import apps
from django.db import connection, connections, models, transaction
from django.db.models import F, signals
from django.test.utils import CaptureQueriesContext

import django_mirror
from django_mirror.core.events import DELETE, UPSERT, decode_row, decode_value
from django_mirror.models import OutboxBatch
from tests.conftest import BOTH, assert_mirrored, both_databases, drain_and_replay, rows
from tests.testapp.models import (
    AllTypes,
    Author,
    Book,
    Counter,
    Secret,
    Shelf,
    ShelfBook,
    Tag,
    Unmirrored,
)

both_aliases = pytest.mark.django_db(databases=BOTH)
BookTag = Book.tags.through
Op = tuple[str, str, Any]


class Outbox:
    """What capture wrote to the source's outbox since the last ``take()``."""

    def __init__(self) -> None:
        self.seen = 0

    def batches(self) -> list[OutboxBatch]:
        return list(OutboxBatch.objects.using("default").filter(id__gt=self.seen).order_by("id"))

    def take(self) -> list[dict[str, Any]]:
        """Events of the batches written since the last call, checked for shape."""
        events: list[dict[str, Any]] = []
        for batch in self.batches():
            payload = batch.events()
            assert batch.count == len(payload)
            for event in payload:
                assert event["model"] == batch.model
                assert event["schema"] == 1 and event["source"] == "default"
                assert event["op"] in (UPSERT, DELETE)
                assert (event["row"] is None) == (event["op"] == DELETE)
            events.extend(payload)
            self.seen = batch.id
        return events


@pytest.fixture
def outbox(relay_off: None) -> Outbox:
    """The outbox as capture writes it, before any relay takes from it."""
    return Outbox()


def ops(events: list[dict[str, Any]]) -> list[Op]:
    return [(e["model"], e["op"], decode_value(e["pk"])) for e in events]


def up(model: type[models.Model], *pks: Any) -> set[Op]:
    return {(model._meta.label, UPSERT, pk) for pk in pks}


def gone(model: type[models.Model], *pks: Any) -> set[Op]:
    return {(model._meta.label, DELETE, pk) for pk in pks}


def _plain(value: Any) -> Any:
    return bytes(value) if isinstance(value, memoryview) else value


def image(event: dict[str, Any]) -> dict[str, Any]:
    """The event's after-image decoded to ``{attname: value}``."""
    return decode_row(apps.get_model(event["model"]), event["row"])


def assert_images_committed(events: list[dict[str, Any]]) -> None:
    """Every upsert carries the whole row exactly as the source database holds it now."""
    for event in events:
        if event["op"] != UPSERT:
            continue
        model = apps.get_model(event["model"])
        db_row = rows(model, "default")[decode_value(event["pk"])]
        db_row = {name: _plain(value) for name, value in db_row.items()}
        assert image(event) == db_row, event


# --- save() --------------------------------------------------------------------------------


@both_aliases
def test_save_insert_captures_the_full_row(outbox):
    ada = Author.objects.create(name="Ada")
    book = Book(author=ada, title="Notes", pages=3, isbn="123")
    book.save()
    events = outbox.take()
    assert ops(events) == [("testapp.Author", UPSERT, ada.pk), ("testapp.Book", UPSERT, book.pk)]
    assert events[1]["row"] == {
        "id": book.pk,
        "author_id": ada.pk,
        "editor_id": None,
        "title": "Notes",
        "pages": 3,
        "isbn": "123",
    }
    assert_images_committed(events)


@both_aliases
def test_save_update_captures_the_new_image(outbox):
    ada = Author.objects.create(name="Ada")
    outbox.take()
    ada.name = "Ada Lovelace"
    ada.save()
    events = outbox.take()
    assert ops(events) == [("testapp.Author", UPSERT, ada.pk)]
    assert events[0]["row"] == {"id": ada.pk, "name": "Ada Lovelace"}


@both_aliases
def test_save_update_fields_captures_the_whole_committed_row(outbox):
    """The instance holds a stale ``pages``; the event must carry the database's value."""
    ada = Author.objects.create(name="Ada")
    book = Book.objects.create(author=ada, title="Draft", pages=1)
    with django_mirror.paused():
        Book.objects.filter(pk=book.pk).update(pages=99, isbn="978")
    outbox.take()
    book.title = "Final"
    book.save(update_fields=["title"])
    events = outbox.take()
    assert ops(events) == [("testapp.Book", UPSERT, book.pk)]
    assert image(events[0]) == {
        "id": book.pk,
        "author_id": ada.pk,
        "editor_id": None,
        "title": "Final",
        "pages": 99,
        "isbn": "978",
    }
    assert_images_committed(events)


@both_aliases
def test_save_with_f_expression_captures_the_computed_value(outbox):
    counter = Counter.objects.create(name="views", value=41)
    outbox.take()
    counter.value = F("value") + 1
    counter.save()
    events = outbox.take()
    assert ops(events) == [("testapp.Counter", UPSERT, counter.pk)]
    assert image(events[0])["value"] == 42
    assert_images_committed(events)


@both_databases
def test_save_paths_replay_to_an_equal_target(kinesis):
    counter = Counter.objects.create(name="views", value=1)
    counter.value = F("value") + 10
    counter.save()
    counter.refresh_from_db()
    counter.name = "hits"
    counter.save(update_fields=["name"])
    ada = Author.objects.create(name="Ada")
    Book.objects.create(author=ada, title="Notes", isbn="1-2")
    drain_and_replay()
    assert_mirrored(Counter, Author, Book)
    assert Counter.objects.using("new").get().value == 11


# --- delete() --------------------------------------------------------------------------------


@both_aliases
def test_instance_delete_captures_a_delete(outbox):
    counter = Counter.objects.create(name="a")
    pk = counter.pk
    outbox.take()
    counter.delete()
    assert ops(outbox.take()) == [("testapp.Counter", DELETE, pk)]


@both_aliases
def test_queryset_delete_captures_each_row_in_one_batch(outbox):
    counters = Counter.objects.bulk_create([Counter(name=f"c{i}") for i in range(5)])
    outbox.take()
    Counter.objects.filter(name__in=["c1", "c3"]).delete()
    batches = outbox.batches()
    assert [(b.model, b.count) for b in batches] == [("testapp.Counter", 2)]
    assert set(ops(outbox.take())) == gone(Counter, counters[1].pk, counters[3].pk)


@both_databases
def test_cascades_into_mirrored_children_are_captured(kinesis, outbox):
    """CASCADE deletes and SET_NULL rewrites of children send no save signal of their own."""
    ada = Author.objects.create(name="Ada")
    bob = Author.objects.create(name="Bob")
    b1 = Book.objects.create(author=ada, editor=bob, title="One")
    b2 = Book.objects.create(author=ada, title="Two")
    b3 = Book.objects.create(author=bob, editor=ada, title="Three")
    typed = AllTypes.objects.create(author=bob, text="x")
    drain_and_replay()

    bob_pk = bob.pk
    bob.delete()
    events = outbox.take()
    assert set(ops(events)) == gone(Author, bob_pk) | gone(Book, b3.pk) | up(Book, b1.pk) | up(
        AllTypes, typed.pk
    )
    assert len(events) == 4
    by_op = dict(zip(ops(events), events, strict=True))
    assert image(by_op[("testapp.Book", UPSERT, b1.pk)])["editor_id"] is None
    assert image(by_op[("testapp.AllTypes", UPSERT, typed.pk)])["author_id"] is None
    assert_images_committed(events)

    Author.objects.filter(pk=ada.pk).delete()
    assert set(ops(outbox.take())) == gone(Author, ada.pk) | gone(Book, b1.pk, b2.pk)
    drain_and_replay()
    assert_mirrored(Author, Book, AllTypes)


@both_databases
def test_deleting_a_book_deletes_its_m2m_rows_on_the_target(kinesis, outbox):
    """Rows of the auto-created and the explicit through table go with the book."""
    ada = Author.objects.create(name="Ada")
    book = Book.objects.create(author=ada, title="One")
    keep = Book.objects.create(author=ada, title="Two")
    math, art = Tag.objects.create(name="math"), Tag.objects.create(name="art")
    book.tags.add(math, art)
    keep.tags.add(math)
    shelf = Shelf.objects.create(name="top")
    shelf.books.add(book, keep)
    drain_and_replay()
    through_pks = list(BookTag.objects.filter(book=book).values_list("pk", flat=True))
    shelved = ShelfBook.objects.get(book=book).pk
    outbox.take()

    book_pk = book.pk
    book.delete()
    assert set(ops(outbox.take())) == (
        gone(Book, book_pk) | gone(BookTag, *through_pks) | gone(ShelfBook, shelved)
    )
    art.delete()  # a tag with no books left
    drain_and_replay()
    assert_mirrored(Book, Tag, BookTag, Shelf, ShelfBook)


# --- QuerySet.update(), bulk_create(), bulk_update() -----------------------------------------


@both_aliases
def test_queryset_update_with_f_captures_new_values_of_matched_rows(outbox):
    counters = Counter.objects.bulk_create(
        [Counter(name="a", value=1), Counter(name="b", value=2), Counter(name="c", value=3)]
    )
    outbox.take()
    changed = Counter.objects.filter(name__in=["a", "c"]).update(value=F("value") * 10)
    assert changed == 2
    events = outbox.take()
    assert set(ops(events)) == up(Counter, counters[0].pk, counters[2].pk)
    assert sorted(image(e)["value"] for e in events) == [10, 30]
    assert_images_committed(events)


@both_aliases
def test_queryset_update_matching_nothing_captures_nothing(outbox):
    Counter.objects.filter(name="nobody").update(value=F("value") + 1)
    assert outbox.batches() == []


@both_aliases
def test_bulk_create_captures_every_row(outbox):
    created = Counter.objects.bulk_create([Counter(name=f"c{i}", value=i) for i in range(30)])
    events = outbox.take()
    assert set(ops(events)) == up(Counter, *(c.pk for c in created))
    assert len(events) == 30
    assert_images_committed(events)


@both_aliases
def test_bulk_create_ignore_conflicts_captures_written_and_conflicting_rows(outbox):
    """The conflicting row is re-imaged as committed; the skipped object writes nothing."""
    old = Tag.objects.create(name="math")
    outbox.take()
    Tag.objects.bulk_create([Tag(name="math"), Tag(name="art")], ignore_conflicts=True)
    art = Tag.objects.get(name="art")
    events = outbox.take()
    assert set(ops(events)) == up(Tag, old.pk, art.pk)
    assert len(events) == 2
    assert_images_committed(events)
    assert Tag.objects.count() == 2


@both_aliases
def test_bulk_create_update_conflicts_captures_the_updated_row(outbox):
    old = Counter.objects.create(name="views", value=1)
    outbox.take()
    objs = [Counter(name="views", value=50), Counter(name="likes", value=7)]
    if connection.features.supports_update_conflicts_with_target:
        Counter.objects.bulk_create(
            objs, update_conflicts=True, unique_fields=["name"], update_fields=["value"]
        )
    else:  # MySQL/MariaDB: ON DUPLICATE KEY UPDATE takes no conflict target
        Counter.objects.bulk_create(objs, update_conflicts=True, update_fields=["value"])
    likes = Counter.objects.get(name="likes")
    events = outbox.take()
    assert set(ops(events)) == up(Counter, old.pk, likes.pk)
    assert len(events) == 2
    assert {image(e)["name"]: image(e)["value"] for e in events} == {"views": 50, "likes": 7}
    assert_images_committed(events)


@both_aliases
def test_bulk_update_captures_each_updated_row(outbox):
    counters = Counter.objects.bulk_create([Counter(name=f"c{i}") for i in range(4)])
    outbox.take()
    for i, counter in enumerate(counters[:3]):
        counter.value = 100 + i
    Counter.objects.bulk_update(counters[:3], ["value"], batch_size=2)
    events = outbox.take()
    assert set(ops(events)) == up(Counter, *(c.pk for c in counters[:3]))
    assert len(events) == 3
    assert_images_committed(events)


@both_databases
def test_bulk_paths_replay_to_an_equal_target(kinesis):
    Tag.objects.bulk_create([Tag(name=n) for n in ("a", "b", "c")])
    Tag.objects.bulk_create([Tag(name="a"), Tag(name="d")], ignore_conflicts=True)
    counters = Counter.objects.bulk_create([Counter(name=f"c{i}", value=i) for i in range(10)])
    for counter in counters:
        counter.value *= 3
    Counter.objects.bulk_update(counters, ["value"])
    Counter.objects.filter(value__gt=9).update(value=F("value") - 1)
    upsert = [Counter(name="c0", value=500), Counter(name="new", value=1)]
    if connection.features.supports_update_conflicts_with_target:
        Counter.objects.bulk_create(
            upsert, update_conflicts=True, unique_fields=["name"], update_fields=["value"]
        )
    else:
        Counter.objects.bulk_create(upsert, update_conflicts=True, update_fields=["value"])
    Counter.objects.filter(name__in=["c1", "c2"]).delete()
    drain_and_replay()
    assert_mirrored(Tag, Counter)
    assert Counter.objects.using("new").get(name="c0").value == 500


# --- get_or_create(), update_or_create() ------------------------------------------------------


@both_aliases
def test_get_or_create_captures_only_a_creation(outbox):
    tag, created = Tag.objects.get_or_create(name="math")
    assert created
    assert ops(outbox.take()) == [("testapp.Tag", UPSERT, tag.pk)]
    again, created = Tag.objects.get_or_create(name="math")
    assert not created and again.pk == tag.pk
    assert outbox.take() == []


@both_aliases
def test_update_or_create_captures_the_committed_row(outbox):
    counter, created = Counter.objects.update_or_create(name="views", defaults={"value": 3})
    assert created
    assert [image(e)["value"] for e in outbox.take()] == [3]
    with django_mirror.paused():
        Counter.objects.filter(pk=counter.pk).update(value=F("value") + 1)
    _, created = Counter.objects.update_or_create(name="views", defaults={"value": F("value") * 10})
    assert not created
    events = outbox.take()
    assert ops(events) == [("testapp.Counter", UPSERT, counter.pk)]
    assert image(events[0])["value"] == 40
    assert_images_committed(events)


# --- many-to-many -------------------------------------------------------------------------------


def _through_pks(book: Book, *tags: Tag) -> list[int]:
    return list(BookTag.objects.filter(book=book, tag__in=tags).values_list("pk", flat=True))


@both_aliases
def test_m2m_auto_through_add_remove_clear_set(outbox):
    ada = Author.objects.create(name="Ada")
    book = Book.objects.create(author=ada, title="One")
    t1, t2, t3 = (Tag.objects.create(name=n) for n in ("t1", "t2", "t3"))
    outbox.take()

    book.tags.add(t1, t2)
    events = outbox.take()
    assert set(ops(events)) == up(BookTag, *_through_pks(book, t1, t2))
    assert len(events) == 2
    assert {(e["row"]["book_id"], e["row"]["tag_id"]) for e in events} == {
        (book.pk, t1.pk),
        (book.pk, t2.pk),
    }
    assert_images_committed(events)

    book.tags.add(t1)  # already there: nothing written, nothing captured
    assert outbox.take() == []

    (t1_row,) = _through_pks(book, t1)
    book.tags.remove(t1)
    assert ops(outbox.take()) == [("testapp.Book_tags", DELETE, t1_row)]

    (t2_row,) = _through_pks(book, t2)
    book.tags.set([t2, t3])
    assert set(ops(outbox.take())) == up(BookTag, *_through_pks(book, t3))

    book.tags.set([t3])
    assert set(ops(outbox.take())) == gone(BookTag, t2_row)

    (t3_row,) = _through_pks(book, t3)
    book.tags.clear()
    assert ops(outbox.take()) == [("testapp.Book_tags", DELETE, t3_row)]
    assert not BookTag.objects.exists()


@both_aliases
def test_m2m_auto_through_reverse_side(outbox):
    ada = Author.objects.create(name="Ada")
    b1 = Book.objects.create(author=ada, title="One")
    b2 = Book.objects.create(author=ada, title="Two")
    tag = Tag.objects.create(name="math")
    outbox.take()

    tag.books.add(b1, b2)
    events = outbox.take()
    assert set(ops(events)) == up(BookTag, *_through_pks(b1, tag), *_through_pks(b2, tag))
    assert_images_committed(events)

    (row,) = _through_pks(b1, tag)
    tag.books.remove(b1)
    assert ops(outbox.take()) == [("testapp.Book_tags", DELETE, row)]

    (row,) = _through_pks(b2, tag)
    tag.books.clear()
    assert ops(outbox.take()) == [("testapp.Book_tags", DELETE, row)]


@both_aliases
def test_m2m_explicit_through_add_remove_clear(outbox):
    ada = Author.objects.create(name="Ada")
    b1, b2, b3 = (Book.objects.create(author=ada, title=t) for t in ("1", "2", "3"))
    shelf = Shelf.objects.create(name="top")
    outbox.take()

    shelf.books.add(b1, b2, through_defaults={"position": 3})
    events = outbox.take()
    rows_by_book = dict(ShelfBook.objects.values_list("book_id", "pk"))
    assert set(ops(events)) == up(ShelfBook, rows_by_book[b1.pk], rows_by_book[b2.pk])
    assert {image(e)["position"] for e in events} == {3}
    assert_images_committed(events)

    b3.shelves.add(shelf, through_defaults={"position": 9})
    rows_by_book = dict(ShelfBook.objects.values_list("book_id", "pk"))
    events = outbox.take()
    assert ops(events) == [("testapp.ShelfBook", UPSERT, rows_by_book[b3.pk])]
    assert image(events[0])["position"] == 9

    shelf.books.remove(b1)
    assert ops(outbox.take()) == [("testapp.ShelfBook", DELETE, rows_by_book[b1.pk])]

    shelf.books.clear()
    assert set(ops(outbox.take())) == gone(ShelfBook, rows_by_book[b2.pk], rows_by_book[b3.pk])


@both_databases
def test_m2m_changes_replay_to_an_equal_target(kinesis):
    ada = Author.objects.create(name="Ada")
    b1, b2 = Book.objects.create(author=ada, title="1"), Book.objects.create(author=ada, title="2")
    t1, t2, t3 = (Tag.objects.create(name=n) for n in ("t1", "t2", "t3"))
    b1.tags.add(t1, t2, t3)
    b1.tags.remove(t2)
    t3.books.add(b2)
    b2.tags.set([t1])
    shelf = Shelf.objects.create(name="top")
    shelf.books.add(b1, b2, through_defaults={"position": 4})
    shelf.books.remove(b2)
    other = Shelf.objects.create(name="low")
    other.books.add(b2)
    other.books.clear()
    drain_and_replay()
    assert_mirrored(Book, Tag, BookTag, Shelf, ShelfBook)
    assert set(Book.tags.through.objects.using("new").values_list("book_id", "tag_id")) == {
        (b1.pk, t1.pk),
        (b1.pk, t3.pk),
        (b2.pk, t1.pk),
    }


# --- transactions --------------------------------------------------------------------------


@both_databases
def test_rolled_back_transaction_leaves_no_events(outbox):
    with transaction.atomic():
        ada = Author.objects.create(name="Ada")
        Book.objects.create(author=ada, title="One")
        Counter.objects.bulk_create([Counter(name="a")])
        assert outbox.batches()  # captured inside the transaction ...
        transaction.set_rollback(True)
    assert outbox.batches() == []  # ... and gone with it
    with pytest.raises(RuntimeError), transaction.atomic():
        Author.objects.create(name="Bob")
        raise RuntimeError("boom")
    assert outbox.batches() == []
    assert not Author.objects.exists()


@both_databases
def test_rolled_back_savepoint_drops_only_its_events(kinesis, outbox):
    with transaction.atomic():
        ada = Author.objects.create(name="Ada")
        with pytest.raises(RuntimeError), transaction.atomic():
            Author.objects.create(name="ghost")
            Counter.objects.filter(pk=-1).update(value=1)
            Book.objects.create(author=ada, title="ghost book")
            raise RuntimeError("inner")
        counter = Counter.objects.create(name="kept")
    events = outbox.take()
    assert ops(events) == [
        ("testapp.Author", UPSERT, ada.pk),
        ("testapp.Counter", UPSERT, counter.pk),
    ]
    assert len({e["tx"] for e in events}) == 1
    drain_and_replay()
    assert_mirrored(Author, Book, Counter)


@both_databases
def test_write_in_autocommit_mode_commits_row_and_event_together(outbox):
    """Another connection sees both at once, and the connection is back in autocommit."""
    assert connection.get_autocommit() and not connection.in_atomic_block
    counter = Counter.objects.create(name="solo")
    assert connection.get_autocommit() and not connection.in_atomic_block
    seen: dict[str, Any] = {}

    def look() -> None:
        try:
            seen["rows"] = list(Counter.objects.values_list("pk", flat=True))
            seen["events"] = [
                (e["model"], e["op"], e["pk"])
                for batch in OutboxBatch.objects.all()
                for e in batch.events()
            ]
        finally:
            connections.close_all()

    thread = threading.Thread(target=look)
    thread.start()
    thread.join()
    assert seen == {"rows": [counter.pk], "events": [("testapp.Counter", UPSERT, counter.pk)]}


@both_databases
def test_autocommit_save_whose_post_save_receiver_fails_keeps_row_and_event(outbox):
    """The row and its event commit together before ``post_save`` is sent: a receiver
    that raises leaves the saved row, as Django does, and never a row without its event."""

    def fail(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver failed")

    signals.post_save.connect(fail, sender=Counter, dispatch_uid="test-fail")
    try:
        with pytest.raises(RuntimeError):
            Counter.objects.create(name="kept")
    finally:
        signals.post_save.disconnect(sender=Counter, dispatch_uid="test-fail")
    saved = Counter.objects.get()
    events = outbox.take()
    assert ops(events) == [("testapp.Counter", UPSERT, saved.pk)]
    assert image(events[0])["name"] == "kept"


@both_databases
def test_a_save_whose_event_cannot_be_stored_fails_and_takes_its_transaction_with_it(outbox):
    """The outbox ``INSERT`` of a single save failing (the table renamed away) fails the
    save with Django's error, and a caller that catches it still cannot commit the rows
    of that transaction without their event; once the table is back, saves are captured."""
    from django.db import DatabaseError

    table = connection.ops.quote_name(OutboxBatch._meta.db_table)
    away = connection.ops.quote_name("outbox_away")
    Counter.objects.create(name="before")  # the connection's outbox statement is made
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} RENAME TO {away}")
    try:
        with transaction.atomic():
            Unmirrored.objects.create(name="beside")
            with pytest.raises(DatabaseError):
                Counter.objects.create(name="lost")
        assert connection.in_atomic_block is False
        with pytest.raises(DatabaseError):
            Counter.objects.create(name="autocommit")
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {away} RENAME TO {table}")
    assert not Unmirrored.objects.filter(name="beside").exists()
    assert list(Counter.objects.values_list("name", flat=True)) == ["before"]
    Counter.objects.create(name="after")
    assert [image(e)["name"] for e in outbox.take()] == ["before", "after"]


# --- what is not captured -----------------------------------------------------------------------


@both_aliases
def test_paused_captures_nothing(outbox):
    with django_mirror.paused():
        ada = Author.objects.create(name="Ada")
        Book.objects.create(author=ada, title="One").tags.add(Tag.objects.create(name="t"))
        Counter.objects.bulk_create([Counter(name="a")])
        Counter.objects.update(value=F("value") + 1)
        ada.delete()
    assert outbox.batches() == []
    Author.objects.create(name="after")
    assert [b.model for b in outbox.batches()] == ["testapp.Author"]


@both_aliases
def test_unmirrored_models_pay_nothing(outbox):
    for signal in (signals.post_save, signals.post_delete, signals.pre_delete):
        assert not signal.has_listeners(Unmirrored)
    with CaptureQueriesContext(connection) as queries:
        thing = Unmirrored.objects.create(name="x")
        thing.name = "y"
        thing.save()
        Unmirrored.objects.update(name="z")
        thing.delete()
    tables = [q["sql"] for q in queries.captured_queries]
    assert len(tables) == 4
    assert all(Unmirrored._meta.db_table in sql for sql in tables)
    assert outbox.batches() == []


@both_aliases
def test_writes_on_the_target_alias_are_not_captured(outbox):
    """Replay writes the target; capturing that would echo every event forever."""
    ada = Author.objects.using("new").create(name="Ada")
    Book.objects.using("new").create(author=ada, title="One")
    Counter.objects.using("new").bulk_create([Counter(name="a")])
    Counter.objects.using("new").update(value=F("value") + 1)
    ada.delete()
    assert outbox.batches() == []
    assert not OutboxBatch.objects.using("new").exists()


@both_databases
def test_replay_writes_nothing_to_any_outbox(kinesis):
    ada = Author.objects.create(name="Ada")
    Book.objects.create(author=ada, title="One").tags.add(Tag.objects.create(name="t"))
    Secret.objects.create(name="s", token="hidden")
    drain_and_replay()
    assert not OutboxBatch.objects.using("default").exists()
    assert not OutboxBatch.objects.using("new").exists()
    assert_mirrored(Author, Book, Tag, BookTag, Secret)


@both_databases
def test_a_post_save_receiver_writing_the_same_row_is_captured_after_the_save(kinesis):
    """A receiver connected before django-mirror's (any app's, at import) that updates the
    row it was told about: the save's image must not land after the update's and win."""

    def bump(sender: type[Counter], instance: Counter, created: bool, **kw: Any) -> None:
        if created:
            Counter.objects.filter(pk=instance.pk).update(value=F("value") + 1)

    signals.post_save.connect(bump, sender=Counter, dispatch_uid="test.bump")
    # Put it first, as a receiver connected at import time is.
    with signals.post_save.lock:
        receivers = signals.post_save.receivers
        receivers.insert(0, receivers.pop())
        signals.post_save.sender_receivers_cache.clear()
    try:
        Counter.objects.create(name="bumped", value=1)
    finally:
        signals.post_save.disconnect(sender=Counter, dispatch_uid="test.bump")
    drain_and_replay()
    assert Counter.objects.get(name="bumped").value == 2
    assert_mirrored(Counter)


@both_databases
def test_saving_a_child_of_a_mirrored_model_captures_the_parents_row(kinesis, relay_off):
    """Multi-table inheritance: the child's table is not mirrored, its parent's is."""
    from tests.testapp.models import Cafe, Place

    cafe = Cafe.objects.create(name="Bettys", seats=40)
    cafe.name = "Bettys Harrogate"
    cafe.save()
    Cafe.objects.create(name="Taylors", seats=12).save(update_fields=["name"])
    events = [e for b in OutboxBatch.objects.order_by("id") for e in b.events()]
    assert [e["op"] for e in events] == [UPSERT] * 4  # create, save, create, partial save
    assert [decode_value(e["pk"]) for e in events] == [cafe.pk, cafe.pk, cafe.pk + 1, cafe.pk + 1]
    drain_and_replay()
    assert Place.objects.using("new").get(pk=cafe.pk).name == "Bettys Harrogate"
    assert_mirrored(Place)


@both_aliases
def test_the_save_table_wrapper_passes_a_parameter_django_adds_through(outbox):
    """A later Django may give ``Model._save_table`` one more parameter, anywhere in its
    list: the wrapper finds ``raw``, ``cls``, ``using`` and ``update_fields`` by name and
    hands the call over as it came."""
    from django_mirror.capture.signals import _captured_save_table

    received: list[tuple[Any, Any]] = []

    def _save_table(  # Django's, with a positional and a keyword-only parameter added
        self,
        raw=False,
        cls=None,
        returning=None,
        force_insert=False,
        force_update=False,
        using=None,
        update_fields=None,
        *,
        new_option=None,
    ):
        received.append((returning, new_option))
        return models.Model._save_table(
            self, raw, cls, force_insert, force_update, using, update_fields
        )

    wrapped = _captured_save_table(_save_table)
    ada = Author(name="Ada")
    wrapped(ada, False, Author, "rows", False, False, "default", None, new_option=1)
    ada.name = "Ada Lovelace"
    wrapped(ada, cls=Author, using="default", update_fields=["name"], new_option=2)
    wrapped(Unmirrored(name="x"), cls=Unmirrored, using="default", new_option=3)
    assert received == [("rows", 1), (None, 2), (None, 3)]
    events = outbox.take()
    assert ops(events) == [("testapp.Author", UPSERT, ada.pk)] * 2
    assert events[1]["row"] == {"id": ada.pk, "name": "Ada Lovelace"}


def test_a_save_table_without_a_needed_parameter_is_refused_at_once():
    """Capture cannot tell which alias a save writes to: refused when wrapped, at start-up,
    never a save that goes uncaptured."""
    from django_mirror.capture.record import CaptureError
    from django_mirror.capture.signals import _captured_save_table

    def _save_table(self, raw=False, cls=None, force_insert=False, update_fields=None):
        raise AssertionError("never called")

    with pytest.raises(CaptureError, match="using"):
        _captured_save_table(_save_table)
