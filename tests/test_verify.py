"""mirror_verify finds every kind of difference exactly once, and --repair fixes them."""

from __future__ import annotations

import datetime as dt
import json
import math
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from django_mirror.models import MismatchRecord
from tests.conftest import assert_mirrored, both_databases, drain_and_replay
from tests.testapp.models import AllTypes, Author, Book


def _verify(*args: str) -> tuple[int, list[dict]]:
    out = StringIO()
    try:
        call_command("mirror_verify", *args, "--json", "--recheck-delay", "0", stdout=out)
        code = 0
    except CommandError as exc:
        code = exc.returncode
    return code, json.loads(out.getvalue())


@both_databases
def test_clean_mirror_verifies_with_zero_differences(kinesis):
    ada = Author.objects.create(name="Ada")
    Book.objects.bulk_create([Book(author=ada, title=f"t{i}", isbn="secret") for i in range(30)])
    drain_and_replay()
    code, reports = _verify("testapp.Author", "testapp.Book", "--chunk-size", "7")
    assert code == 0
    by_model = {r["model"]: r for r in reports}
    assert set(by_model) == {"testapp.Author", "testapp.Book", "testapp.Book_tags"}
    assert all(r["differences"] == [] for r in reports)
    assert by_model["testapp.Book"]["rows"] == 30 and by_model["testapp.Book"]["chunks"] == 5


@both_databases
def test_tampered_target_differences_found_once_each_and_repaired(kinesis):
    ada = Author.objects.create(name="Ada")
    books = Book.objects.bulk_create(
        [Book(author=ada, title=f"t{i}", isbn=f"isbn-{i}") for i in range(10)]
    )
    rows = AllTypes.objects.bulk_create(
        [
            AllTypes(
                maybe="",
                flt=0.0,
                dec=Decimal("1.500000"),
                moment=dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC),
            )
            for _ in range(4)
        ]
    )
    drain_and_replay()
    target_books = Book.objects.using("new")
    target_books.filter(pk=books[0].pk).update(title="changed")  # changed field
    target_books.filter(pk=books[1].pk).delete()  # missing in target
    Book.objects.using("new").bulk_create(  # extra in target
        [Book(id=10_000, author_id=ada.pk, title="ghost")]
    )
    target_books.filter(pk=books[2].pk).update(isbn="leaked?")  # a redacted field
    target_all = AllTypes.objects.using("new")
    target_all.filter(pk=rows[0].pk).update(maybe=None)  # NULL vs empty string
    target_all.filter(pk=rows[1].pk).update(flt=-0.0)  # 0.0 vs -0.0
    target_all.filter(pk=rows[2].pk).update(moment=dt.datetime(2026, 1, 1, 13, tzinfo=dt.UTC))
    target_all.filter(pk=rows[3].pk).update(dec=Decimal("1.500001"))

    code, reports = _verify("testapp.Book", "testapp.AllTypes", "--chunk-size", "3")
    assert code == 1
    books_report, all_report, tags_report = reports
    assert tags_report["model"] == "testapp.Book_tags" and tags_report["differences"] == []
    kinds = sorted((d["kind"], d["pk"]) for d in books_report["differences"])
    assert kinds == sorted(
        [
            ("changed", str(books[0].pk)),
            ("missing", str(books[1].pk)),
            ("extra", "10000"),
            ("changed", str(books[2].pk)),
        ]
    )
    expected = {
        str(rows[0].pk): ["maybe"],
        str(rows[1].pk): ["flt"],
        str(rows[2].pk): ["moment"],
        str(rows[3].pk): ["dec"],
    }
    stored = target_all.get(pk=rows[1].pk).flt
    if math.copysign(1.0, stored) > 0:  # SQLite stores -0.0 as 0: nothing to find there
        del expected[str(rows[1].pk)]
    assert {d["pk"]: list(d["fields"]) for d in all_report["differences"]} == expected
    records = MismatchRecord.objects.filter(kind="verify")
    assert records.count() == 4 + len(expected)
    assert "leaked?" not in json.dumps(list(records.values("source_value", "target_value", "diff")))
    assert "isbn-2" not in json.dumps(books_report)

    code, reports = _verify("testapp.Book", "testapp.AllTypes", "--repair")
    assert code == 0 and [r["repaired"] for r in reports] == [4, len(expected), 0]
    assert_mirrored(Book, AllTypes)
    code, _ = _verify("testapp.Book", "testapp.AllTypes")
    assert code == 0


@both_databases
def test_repair_keeps_versions_so_later_events_still_apply(kinesis):
    ada = Author.objects.create(name="Ada")
    drain_and_replay()
    Author.objects.using("new").filter(pk=ada.pk).update(name="tampered")
    _verify("testapp.Author", "--repair")
    Author.objects.filter(pk=ada.pk).update(name="Ada Lovelace")
    drain_and_replay()
    assert_mirrored(Author)


@pytest.mark.django_db(databases=["default", "new"])
def test_verify_rejects_bad_arguments():
    with pytest.raises(CommandError, match="not mirrored"):
        call_command("mirror_verify", "testapp.Unmirrored")
    with pytest.raises(CommandError, match="--chunk-size"):
        call_command("mirror_verify", "--chunk-size", "0")
