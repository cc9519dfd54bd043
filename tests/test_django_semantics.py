"""With a model mirrored, Django raises what it raises without django-mirror: the cases
Django's own test suite found (``make test-django``, docs/django-suite.md)."""

from __future__ import annotations

import re

import pytest
from django.db import connections, transaction

from django_mirror.capture import signals
from django_mirror.pipeline import relay
from tests.testapp.models import Author, Book


@pytest.mark.parametrize(
    ("make_queryset", "message"),
    [
        (lambda: Author.objects.all()[:1], "Cannot use 'limit' or 'offset' with delete()."),
        (lambda: Author.objects.values("name"), "Cannot call delete() after .values()"),
    ],
)
def test_delete_refuses_its_arguments_before_any_query(make_queryset, message):
    """No database access at all (pytest-django refuses it here, as a SimpleTestCase
    does): Django's TypeError comes before any transaction of ours."""
    with pytest.raises(TypeError, match=re.escape(message)):
        make_queryset().delete()


@pytest.mark.django_db
def test_an_update_of_no_row_still_compiles_its_statement():
    """Django compiles the SET values even when no row matches; so must capture."""
    from django.db.models import Max

    with pytest.raises(Exception, match="[Aa]ggregate"):
        Author.objects.filter(pk=-1).update(name=Max("name"))


@pytest.mark.django_db
def test_m2m_remove_in_a_doomed_transaction_raises_djangos_error(monkeypatch):
    def lock_with_a_statement(using: str, table: str) -> None:
        with connections[using].cursor() as cursor:  # as SQLite's DEFERRED mode does
            cursor.execute("SELECT 1")

    monkeypatch.setattr(signals, "write_lock_first", lock_with_a_statement)
    author = Author.objects.create(name="a")
    book = Book.objects.create(author=author, title="t")
    with transaction.atomic():
        with pytest.raises(ValueError), transaction.atomic(savepoint=False):
            book.tags.add("not a key")  # dooms the transaction (no savepoint)
        with pytest.raises(ValueError, match="expected a number"):
            book.tags.remove("not a key")  # Django's ValueError, not ours


@pytest.mark.django_db
def test_no_relay_thread_for_an_in_memory_sqlite_database(monkeypatch):
    kicked: list[str] = []
    monkeypatch.setattr(relay.shipper, "kick", kicked.append)
    monkeypatch.setattr(relay, "shared_in_memory", lambda using: True)
    relay.after_commit("default")
    assert kicked == []
    monkeypatch.setattr(relay, "shared_in_memory", lambda using: False)
    relay.after_commit("default")
    assert kicked == ["default"]


def test_an_in_memory_sqlite_database_is_told_apart(monkeypatch):
    """What keeps our threads out of Django's in-memory test databases (and the files
    of this suite's own, which they share nothing through, in)."""
    from django.db import connections

    from django_mirror.core.locking import shared_in_memory

    memory = {**connections.settings["default"], "NAME": ":memory:"}
    monkeypatch.setitem(connections.settings, "memory", memory)
    memory["ENGINE"] = "django.db.backends.sqlite3"
    try:
        assert shared_in_memory("memory")
        assert not shared_in_memory("default")
    finally:
        del connections["memory"]


def test_a_built_in_field_subclass_changing_no_conversion_is_imaged_like_its_base():
    from django.db import models

    from django_mirror.core import images

    class CreatedField(models.DateTimeField):  # as Django's queries tests: a default only
        db_returning = True

    class Wrapped(models.IntegerField):
        def from_db_value(self, value, expression, connection):  # type: ignore[no-untyped-def]
            return value

    assert images._normaliser(CreatedField()) is images._normaliser(models.DateTimeField())
    assert images._normaliser(Wrapped()) is None


@pytest.mark.django_db(transaction=True)
def test_figures_taken_under_one_use_tz_are_written_under_the_other(settings):
    """Django's tests switch ``USE_TZ`` (``override_settings``) between a figure taken
    and its window written: the writer neither compares naive with aware minutes nor
    hands the database a minute of the wrong kind."""
    from django_mirror.models import MetricWindow
    from django_mirror.observability import stats

    stats.flush()  # what earlier tests left
    for use_tz in (True, False):
        settings.USE_TZ = use_tz
        stats.add(f"semantics.TZ{use_tz}", "captured", 1)
    for use_tz in (False, True):
        settings.USE_TZ = use_tz
        assert stats.flush() == (2 if use_tz is False else 0)
    assert set(MetricWindow.objects.values_list("model", flat=True)) >= {
        "semantics.TZTrue",
        "semantics.TZFalse",
    }
