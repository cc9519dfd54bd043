"""Models that must move together: groups from the foreign-key graph, a split move
refused (command, admin, API) unless forced with a reason, a group moved as one, groups
shown in mirror_status and the dashboard; and live applies whose rows reach a target
with real foreign-key constraints in an order those constraints accept."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connections
from django.test import Client
from django.test.utils import CaptureQueriesContext

from django_mirror.config import conf, graph
from django_mirror.models import MirrorState, MismatchRecord
from django_mirror.phases import transitions
from tests.conftest import SHOP, both_databases, mirroring
from tests.testapp.models import AllTypes, Author, Book, Shelf, ShelfBook, Tag


def phase_of(label: str) -> str:
    config = conf.config_for_label(label)
    assert config is not None
    return config.phase


def test_groups_follow_the_foreign_keys_whose_on_delete_writes_the_other_table():
    (group,) = graph.groups()
    assert group.members == SHOP
    ties = {str(t) for t in group.ties}
    assert "testapp.Book.author -> testapp.Author (CASCADE)" in ties
    assert "testapp.Book.editor -> testapp.Author (SET_NULL)" in ties
    assert "testapp.AllTypes.author -> testapp.Author (SET_NULL)" in ties
    assert "testapp.Book.testapp_book_tags (tag) -> testapp.Tag (CASCADE)" in ties  # M2M
    # No foreign key at all: a group of one, and not listed among the groups.
    assert graph.group_of("testapp.Counter").members == ("testapp.Counter",)
    assert graph.group_of("testapp.Book_tags") is group  # an M2M table moves with its owner


@both_databases
def test_a_move_that_splits_a_group_is_refused_naming_the_models_to_move_together():
    with pytest.raises(CommandError) as refused:
        call_command("mirror_phase", "testapp.Book", "mirror", "--force", stdout=StringIO())
    assert "needs a reason" in str(refused.value)
    with pytest.raises(CommandError) as refused:
        call_command("mirror_phase", "testapp.Book", "mirror", stdout=StringIO())
    message = str(refused.value)
    assert "group moves together" in message
    for label in SHOP:
        if label != "testapp.Book":
            assert label in message
    assert "mirror_phase --group testapp.Book mirror" in message
    with pytest.raises(transitions.PhaseRefused, match="group moves together"):
        transitions.change_phase("testapp.Author", "mirror")
    assert not MirrorState.objects.exists()


@both_databases
def test_a_split_can_be_forced_with_a_reason_and_is_shown_as_split():
    out = StringIO()
    call_command(
        "mirror_phase",
        "testapp.Book",
        "mirror",
        "--force",
        "--reason",
        "testing a split",
        "--json",
        stdout=out,
    )
    report = json.loads(out.getvalue())
    assert (report["model"], report["phase"], report["forced"]) == ("testapp.Book", "mirror", True)
    assert report["group"] == list(SHOP)
    out = StringIO()
    call_command("mirror_status", stdout=out)
    assert f"group {', '.join(SHOP)}: SPLIT (capture, mirror)" in out.getvalue()


@both_databases
def test_a_whole_group_moves_as_one_and_back(kinesis):
    out = StringIO()
    call_command(
        "mirror_phase",
        "--group",
        "testapp.Tag",
        "mirror",
        "--force",
        "--reason",
        "no verify in this test",
        "--json",
        stdout=out,
    )
    moved = json.loads(out.getvalue())["models"]
    assert [m["model"] for m in moved] == list(SHOP)
    assert {phase_of(label) for label in SHOP} == {"mirror"}
    assert conf.config_for_label("testapp.Book_tags").phase == "mirror"  # type: ignore[union-attr]
    states = MirrorState.objects.filter(model__in=SHOP)
    assert states.count() == len(SHOP) and {s.generation for s in states} == {1}
    # Rolling back the whole group needs no force: nothing is split by it.
    call_command("mirror_phase", "--group", "testapp.Author", "capture", stdout=StringIO())
    assert {phase_of(label) for label in SHOP} == {"capture"}
    out = StringIO()
    call_command("mirror_status", "--json", stdout=out)
    (group,) = json.loads(out.getvalue())["groups"]
    assert group["members"] == list(SHOP) and set(group["phases"].values()) == {"capture"}


@both_databases
def test_the_admin_moves_the_whole_group_by_default_and_refuses_a_split(admin_client: Client):
    move = "/admin/django_mirror/mirrorstate/move/"
    alone = {"model": "testapp.Author", "phase": "mirror", "force": "on", "reason": "r"}
    page = admin_client.post(move, {**alone, "check": "1"}).content.decode()
    assert "tied by foreign keys to" in page and "testapp.ShelfBook" in page
    # Unforced, a split is refused; the form offers the whole group, ticked by default.
    page = admin_client.post(
        move, {"model": "testapp.Author", "phase": "mirror", "reason": "", "confirm": "1"}
    ).content.decode()
    assert "cannot move to" in page and not MirrorState.objects.exists()
    assert re.search(
        r'<input type="checkbox" name="group"[^>]* checked', admin_client.get(move).content.decode()
    )
    response = admin_client.post(move, {**alone, "group": "on", "confirm": "1"})
    assert response.status_code == 302
    assert {phase_of(label) for label in SHOP} == {"mirror"}
    listing = admin_client.get("/admin/django_mirror/mirrorstate/").content.decode()
    assert "moves with" in listing and "testapp.ShelfBook" in listing
    board = admin_client.get("/admin/django_mirror/metricwindow/").content.decode()
    assert 'id="mirror-groups"' in board and "testapp.Book.editor -&gt; testapp.Author" in board


def _shop(prefix: str) -> tuple[Author, Author]:
    """An author with books (some edited by another author), tags, shelves and a typed row
    pointing at it; and that other author."""
    doomed, editor = (
        Author.objects.create(name=f"{prefix}doomed"),
        Author.objects.create(name=f"{prefix}editor"),
    )
    tag = Tag.objects.create(name=f"{prefix}tag")
    shelf = Shelf.objects.create(name=f"{prefix}shelf")
    for i in range(3):
        book = Book.objects.create(author=doomed, editor=editor, title=f"{prefix}own{i}")
        book.tags.add(tag)
        ShelfBook.objects.create(shelf=shelf, book=book, position=i)
        edited = Book.objects.create(author=editor, editor=doomed, title=f"{prefix}edited{i}")
        edited.tags.add(tag)
    AllTypes.objects.create(author=doomed)
    return doomed, editor


def _same_rows() -> None:
    for model in (Author, Book, Tag, Shelf, ShelfBook, AllTypes, Book.tags.through):
        fields = [f.attname for f in model._meta.concrete_fields]
        source = list(model.objects.using("default").order_by("pk").values_list(*fields))
        target = list(model.objects.using("new").order_by("pk").values_list(*fields))
        assert source == target, model


@contextmanager
def checked_per_statement(alias: str = "new") -> Iterator[None]:
    """PostgreSQL's foreign keys as a schema not made by Django has them: checked at
    each statement (NOT DEFERRABLE), as MariaDB and SQLite outside Django check them."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT conrelid::regclass::text, conname FROM pg_constraint "
            "WHERE contype = 'f' AND condeferrable AND conrelid::regclass::text LIKE 'testapp_%%'"
        )
        keys = cursor.fetchall()
        for table, name in keys:
            cursor.execute(f'ALTER TABLE "{table}" ALTER CONSTRAINT "{name}" NOT DEFERRABLE')
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            for table, name in keys:
                cursor.execute(
                    f'ALTER TABLE "{table}" ALTER CONSTRAINT "{name}" DEFERRABLE INITIALLY DEFERRED'
                )


@both_databases
def test_deleting_parents_live_reaches_a_target_with_real_foreign_keys_in_order(kinesis):
    """A deleted author's books cascade, the books it edited and a typed row are set to
    NULL, M2M rows go: the target gets them in an order its constraints accept, checked
    at each statement, so no write fails live."""
    with mirroring({label: {} for label in SHOP}), checked_per_statement():
        doomed, editor = _shop("a")
        _same_rows()  # every row reached the target live
        with CaptureQueriesContext(connections["new"]) as target_queries:
            doomed.delete()
        _same_rows()
        # In one target transaction, a statement per table: not a row at a time, as a
        # batch is retried when its order broke a key check.
        deletes = [
            q["sql"]
            for q in target_queries.captured_queries
            if q["sql"].startswith("DELETE") and "testapp_" in q["sql"].split("WHERE")[0]
        ]
        assert len(deletes) == 4, deletes  # shelf rows, M2M rows, books, the author
        Tag.objects.all().delete()  # M2M rows first, then the tags
        editor.delete()
        _same_rows()
        kept, _ = _shop("b")
        Author.objects.filter(pk=kept.pk).delete()  # the queryset path
        _same_rows()
    assert not MismatchRecord.objects.filter(kind="write").exists()
    assert Book.objects.using("new").exists() and connections["new"].vendor in (
        "sqlite",
        "postgresql",
        "mysql",
    )


@both_databases
def test_rows_inserted_together_reach_the_target_parents_first(kinesis):
    """One transaction creating a parent after nothing else: a child made in the same
    transaction must not reach a key-checking target before its parent."""
    from django.db import transaction

    with mirroring({label: {} for label in SHOP}), checked_per_statement():
        with transaction.atomic():
            tag = Tag.objects.create(name="t")
            author = Author.objects.create(name="p")
            book = Book.objects.create(author=author, title="c")
            book.tags.add(tag)
            # Recorded children first: the author is renamed after its book exists.
            Author.objects.filter(pk=author.pk).update(name="parent")
        _same_rows()
    assert not MismatchRecord.objects.filter(kind="write").exists()
