"""``DatabaseTarget.apply`` on one batch at a time: which events of a batch it applies,
and that the rows it writes are stored exactly as Django stores them in the source."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from django.db import connections

from django_mirror import paused
from django_mirror.models import RowVersion
from django_mirror.targets.database import DatabaseTarget
from tests.conftest import both_databases, delete_event, upsert_event
from tests.testapp.models import AllTypes, Author


def versions(model: type) -> dict[str, tuple[int, bool]]:
    held = RowVersion.objects.using("new").filter(model=model._meta.label_lower)
    return {
        key: (version, deleted)
        for key, version, deleted in held.values_list("pk_value", "version", "deleted")
    }


def names() -> dict[int, str]:
    return dict(Author.objects.using("new").values_list("pk", "name"))


@both_databases
def test_a_batch_applies_its_newer_events_and_skips_the_others() -> None:
    target = DatabaseTarget("new")
    first = target.apply([upsert_event(Author(pk=pk, name=f"a{pk}"), 10) for pk in range(1, 5)])
    assert (first.applied, first.stale, first.failed) == (4, 0, [])

    mixed = target.apply(
        [
            upsert_event(Author(pk=1, name="newer"), 11),
            upsert_event(Author(pk=2, name="same version"), 10),  # a duplicate
            upsert_event(Author(pk=3, name="older"), 5),  # arrived late
            delete_event(Author(pk=4), 12),
            upsert_event(Author(pk=5, name="new row"), 1),
            delete_event(Author(pk=6), 3),  # a row the target never held
        ]
    )
    assert (mixed.applied, mixed.stale, mixed.failed) == (4, 2, [])
    assert mixed.applied_by_model == {"testapp.Author": 4}
    assert names() == {1: "newer", 2: "a2", 3: "a3", 5: "new row"}
    assert versions(Author) == {
        "1": (11, False),
        "2": (10, False),
        "3": (10, False),
        "4": (12, True),
        "5": (1, False),
        "6": (3, True),
    }

    late = target.apply(
        [upsert_event(Author(pk=4, name="zombie"), 11), upsert_event(Author(pk=1, name="old"), 2)]
    )
    assert (late.applied, late.stale) == (0, 2)  # a tombstone keeps its row deleted
    assert names() == {1: "newer", 2: "a2", 3: "a3", 5: "new row"}


def stored_moments(alias: str) -> dict[str, Any]:
    """The ``moment`` column as the database's own text (SQLite stores text: its exact
    form matters to comparisons in SQL, which Django's parsing would hide)."""
    connection = connections[alias]
    text = "CHAR" if connection.vendor == "mysql" else "TEXT"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id, CAST(moment AS {text}) FROM testapp_alltypes")
        return {str(key).replace("-", ""): moment for key, moment in cursor.fetchall()}


@both_databases
def test_datetimes_are_stored_as_django_stores_them() -> None:
    kolkata = ZoneInfo("Asia/Kolkata")
    utc = [
        dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC),
        dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=dt.UTC),
        dt.datetime(1999, 12, 31, 0, 0, 0, 1, tzinfo=dt.UTC),
        None,
    ]
    offset = [dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=kolkata), *utc]
    with paused():
        all_utc = [AllTypes.objects.create(moment=moment) for moment in utc]
        mixed = [AllTypes.objects.create(moment=moment) for moment in offset]
    target = DatabaseTarget("new")
    # Capture encodes in UTC; another producer may keep the offset, and a mixed batch
    # goes value by value.
    for batch in (all_utc, mixed):
        result = target.apply([upsert_event(obj, 1) for obj in batch])
        assert (result.applied, result.failed) == (len(batch), [])
    assert stored_moments("new") == stored_moments("default")


@both_databases
def test_a_bad_datetime_fails_its_event_alone() -> None:
    good, bad = AllTypes(), AllTypes()
    bad_event = upsert_event(bad, 1)
    assert isinstance(bad_event.row, dict)
    bad_event.row["moment"] = {"$dt": "2024-02-30T00:00:00+00:00"}
    result = DatabaseTarget("new").apply([upsert_event(good, 1), bad_event])
    assert result.applied == 1
    ((failed, reason),) = result.failed
    assert failed is bad_event and "day is out of range for month" in reason
    assert list(AllTypes.objects.using("new").values_list("pk", flat=True)) == [good.pk]
