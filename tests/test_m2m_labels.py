"""mirror_copy and mirror_verify take an auto-created many-to-many table by its own label
(``testapp.Book_tags``, as events and reports name it), alone or beside its model."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from django_mirror import paused
from tests.conftest import assert_mirrored, both_databases, drain_and_replay
from tests.testapp.models import Author, Book, Tag

Links = Book.tags.through


def _run(command: str, *args: str) -> tuple[int, list[dict]]:
    out = StringIO()
    extra = ("--recheck-delay", "0") if command == "mirror_verify" else ()
    try:
        call_command(command, *args, *extra, "--json", stdout=out)
        code = 0
    except CommandError as exc:
        code = exc.returncode
    return code, json.loads(out.getvalue())


def _tagged_book() -> Book:
    book = Book.objects.create(author=Author.objects.create(name="Ada"), title="Notes")
    book.tags.add(*Tag.objects.bulk_create([Tag(name="a"), Tag(name="b")]))
    return book


@both_databases
def test_copy_takes_a_many_to_many_table_by_its_own_label(kinesis):
    with paused():
        _tagged_book()
    code, reports = _run("mirror_copy", "testapp.book_tags")  # case-insensitive
    assert code == 0
    assert [(r["model"], r["copied"]) for r in reports] == [("testapp.Book_tags", 2)]
    assert Links.objects.using("new").count() == 2
    assert not Book.objects.using("new").exists()  # only the table named


@both_databases
def test_verify_takes_a_many_to_many_table_by_its_own_label(kinesis):
    book = _tagged_book()
    drain_and_replay()
    assert_mirrored(Links)
    code, reports = _run("mirror_verify", "testapp.Book_tags")
    assert (code, [(r["model"], r["differences"]) for r in reports]) == (
        0,
        [("testapp.Book_tags", [])],
    )
    Links.objects.using("new").filter(book=book, tag__name="a").delete()
    code, reports = _run("mirror_verify", "testapp.Book_tags")
    assert code == 1
    assert [d["kind"] for d in reports[0]["differences"]] == ["missing"]


@both_databases
def test_a_table_named_beside_its_model_is_verified_once(kinesis):
    _tagged_book()
    drain_and_replay()
    code, reports = _run("mirror_verify", "testapp.Book_tags", "testapp.Book")
    assert code == 0
    assert [r["model"] for r in reports] == ["testapp.Book_tags", "testapp.Book"]


@pytest.mark.django_db
@pytest.mark.parametrize("command", ["mirror_copy", "mirror_verify"])
def test_an_unknown_label_lists_the_tables_that_can_be_named(command):
    with pytest.raises(CommandError, match=r"not mirrored: testapp\.Nope \(mirrored: .*") as exc:
        call_command(command, "testapp.Nope")
    assert "testapp.book_tags" in str(exc.value)
