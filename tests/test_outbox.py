"""The outbox rows capture stores: how a large write is split, and how PostgreSQL keeps
their payloads."""

from __future__ import annotations

import pytest
from django.db import connections

from django_mirror.capture import outbox
from django_mirror.models import OutboxBatch
from tests.testapp.models import Tag


@pytest.mark.django_db
def test_a_write_of_more_events_than_a_row_holds_fills_consecutive_rows() -> None:
    rows = outbox.MAX_BATCH_EVENTS + 1
    Tag.objects.bulk_create([Tag(name=f"t{n}") for n in range(rows)])
    batches = list(OutboxBatch.objects.order_by("id"))
    assert [b.count for b in batches] == [outbox.MAX_BATCH_EVENTS, 1]
    events = [event for batch in batches for event in batch.events()]
    versions = [event["version"] for event in events]
    assert versions == sorted(set(versions)), "versions must grow and never collide"
    assert {event["pk"] for event in events} == set(Tag.objects.values_list("pk", flat=True))
    assert len({event["tx"] for event in events}) == 1


@pytest.mark.django_db
def test_postgresql_compresses_payloads_with_lz4() -> None:
    connection = connections["default"]
    if connection.vendor != "postgresql":
        pytest.skip("TOAST compression is PostgreSQL's")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
        )
        (has_lz4,) = cursor.fetchone()
        cursor.execute(
            "SELECT attcompression FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attname = 'payload'",
            [OutboxBatch._meta.db_table],
        )
        # A server built without lz4 keeps its default.
        assert cursor.fetchone() == ("l" if has_lz4 else "",)


@pytest.mark.django_db(transaction=True)
def test_a_single_event_row_is_written_in_the_open_transaction_even_as_its_first_statement() -> (
    None
):
    """``write_op`` (a single save's outbox row, which may skip the driver's cursor) stores
    exactly what ``write`` stores, and inside the caller's transaction even when nothing
    ran in it before: rolled back with it, committed with it."""
    import datetime as dt

    from django.db import transaction

    connection = connections["default"]
    columns = ("id", "name")
    op = '["u",7,[7,"s\\u00e9\\"q"]]'
    head = outbox.head("default", columns, 3)

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback), transaction.atomic():
        outbox.write_op(connection, "testapp.Tag", "t" * 32, head, op)
        assert OutboxBatch.objects.count() == 1
        raise Rollback
    assert OutboxBatch.objects.count() == 0

    with transaction.atomic():
        outbox.write_op(connection, "testapp.Tag", "t" * 32, head, op)
    (batch,) = OutboxBatch.objects.all()
    expected = outbox.Payload(
        tx="t" * 32, now=batch.created_at, source="default", columns=columns, gen=3, ops=[op]
    )
    assert (batch.model, batch.count, batch.attempts) == ("testapp.Tag", 1, 0)
    assert batch.payload == expected.to_json()
    assert abs(batch.created_at - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)
