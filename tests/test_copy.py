"""mirror_copy: existing rows reach the target without undoing what replay applied."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from django_mirror import paused
from django_mirror.models import CopyProgress
from tests.conftest import assert_mirrored, both_databases, drain_and_replay
from tests.testapp.models import Author, Book, Counter, Secret, Tag


def _copy(*args: str) -> dict:
    out = StringIO()
    call_command("mirror_copy", *args, "--json", stdout=out)
    return json.loads(out.getvalue())


@both_databases
def test_copy_then_replay_converges_with_writes_during_copy(kinesis):
    with paused():  # rows that existed before capture was switched on
        Counter.objects.bulk_create([Counter(name=f"c{i}", value=i) for i in range(250)])
    Counter.objects.filter(name="c3").delete()  # captured: a tombstone for a row copy reads
    Counter.objects.filter(name__in=["c4", "c5"]).update(value=-1)
    drain_and_replay()  # replay first: copy must not undo it
    Counter.objects.create(name="late", value=7)
    (report,) = _copy("testapp.Counter", "--chunk-size", "40")
    assert report["finished"] and report["read"] == 250
    # 249 surviving rows plus "late" were read; c4 and c5 were already replayed.
    assert report["copied"] == 248 and report["skipped"] == 2
    drain_and_replay()
    assert_mirrored(Counter)


@both_databases
def test_copy_resumes_from_its_checkpoint_and_restart_starts_over(kinesis):
    with paused():
        Author.objects.bulk_create([Author(name=f"a{i}") for i in range(100)])
    state = CopyProgress.objects.create(
        model="testapp.author", target="new", last_pk=str(Author.objects.order_by("pk")[49].pk)
    )
    (report,) = _copy("testapp.Author", "--chunk-size", "10")
    assert report["read"] == 50 and report["resumed_from"] == state.last_pk
    assert Author.objects.using("new").count() == 50
    (report,) = _copy("testapp.Author", "--restart")
    assert report["read"] == 100 and report["copied"] == 50
    assert_mirrored(Author)


@both_databases
def test_copy_refuses_without_capture_unless_forced(kinesis, settings):
    mirror = {**settings.DJANGO_MIRROR}
    mirror["MODELS"] = {**mirror["MODELS"], "testapp.Author": {"target": "new", "phase": "off"}}
    with override_settings(DJANGO_MIRROR=mirror):
        with pytest.raises(CommandError, match="phase 'off'"):
            call_command("mirror_copy", "testapp.Author")
        Author.objects.create(name="x")
        (report,) = _copy("testapp.Author", "--force")
        assert report["copied"] == 1


@pytest.mark.django_db(databases=["default", "new"])
def test_copy_rejects_unknown_models_and_bad_flags():
    with pytest.raises(CommandError, match="not mirrored: testapp.Unmirrored"):
        call_command("mirror_copy", "testapp.Unmirrored")
    with pytest.raises(CommandError, match="--chunk-size"):
        call_command("mirror_copy", "--chunk-size", "0")


@both_databases
def test_copy_never_sends_excluded_fields(kinesis):
    with paused():
        Secret.objects.create(name="vault", token="hunter2")
    (report,) = _copy("testapp.Secret")
    assert report["copied"] == 1
    copied = Secret.objects.using("new").get()
    assert (copied.name, copied.token) == ("vault", "")


@both_databases
def test_copy_brings_the_many_to_many_rows_of_the_models_copied(kinesis):
    with paused():
        ada = Author.objects.create(name="Ada")
        book = Book.objects.create(author=ada, title="Notes")
        book.tags.add(*Tag.objects.bulk_create([Tag(name="a"), Tag(name="b")]))
    reports = _copy("testapp.Author", "testapp.Book", "testapp.Tag")
    assert {r["model"]: r["copied"] for r in reports}["testapp.Book_tags"] == 2
    assert_mirrored(Author, Book, Tag, Book.tags.through)
    out = StringIO()
    call_command("mirror_copy", "testapp.Book", "--dry-run", "--json", stdout=out)
    assert json.loads(out.getvalue())[0] == {"model": "testapp.Book", "rows": 1}


@both_databases
def test_postgres_to_postgres_copy_streams_binary_copy_and_keeps_every_type(kinesis):
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    from tests.testapp.models import AllTypes

    if connections["default"].vendor != "postgresql" or connections["new"].vendor != "postgresql":
        pytest.skip("the COPY fast path is PostgreSQL to PostgreSQL only")
    with paused():
        AllTypes.objects.bulk_create(
            [
                AllTypes(text=f"t{i} 🎉", dec="1.25", blob=bytes([i, 255]), doc={"i": i})
                for i in range(60)
            ]
        )
        doomed = AllTypes.objects.order_by("pk")[10]
    doomed.delete()  # captured: replay leaves a tombstone that copy must respect
    drain_and_replay()
    with CaptureQueriesContext(connections["new"]) as target_queries:
        (report,) = _copy("testapp.AllTypes", "--chunk-size", "25")
    assert any("mirror_copy_chunk" in q["sql"] for q in target_queries.captured_queries)
    assert report["read"] == 59 and report["copied"] == 59
    assert_mirrored(AllTypes)
    (again,) = _copy("testapp.AllTypes", "--restart")
    assert again["copied"] == 0 and again["skipped"] == 59
