"""KinesisStream.put keeps every PutRecords request inside Kinesis' limits (500 records,
5 MiB with partition keys), and relay ships events of any size it may ship."""

from __future__ import annotations

import json
import math

from django_mirror.models import DeadLetter, OutboxBatch
from django_mirror.pipeline import relay
from django_mirror.streams import KinesisStream, Record
from django_mirror.streams.kinesis import MAX_PUT_BYTES, MAX_PUT_RECORDS
from tests.conftest import assert_mirrored, both_databases, drain_and_replay
from tests.faults import PutLog, hooked, stream_records
from tests.testapp.models import AllTypes, Counter

BIG = 900_000  # bytes of one large record: six of them already overflow one request


def test_put_splits_by_count_and_size(kinesis: KinesisStream) -> None:
    """1,203 small and 12 large records: each request within both limits, all delivered once.
    Plain records, one per event (aggregated requests: tests/test_aggregation.py)."""
    kinesis.aggregate = False
    small = [Record(f"small:{i}", f"event {i}".encode()) for i in range(1203)]
    large = [Record(f"large:{i}", bytes([65 + i]) * BIG) for i in range(12)]
    records = small[:600] + large + small[600:]
    log = PutLog()
    with hooked(kinesis.client, *log.hooks()):
        assert kinesis.put(records) == []
    assert all(len(call) <= MAX_PUT_RECORDS for call in log.calls)
    assert all(size <= MAX_PUT_BYTES for size in log.sizes())
    assert max(len(call) for call in log.calls) == MAX_PUT_RECORDS  # count limit reached
    total = sum(len(r.data) + len(r.partition_key) for r in records)
    assert len(log.calls) >= math.ceil(total / MAX_PUT_BYTES)
    assert len(log.calls) <= 2 * math.ceil(total / MAX_PUT_BYTES) + 2  # no one-record requests
    delivered = [data for shard in stream_records(kinesis).values() for _, data in shard]
    assert sorted(delivered) == sorted(r.data for r in records)


@both_databases
def test_relay_ships_thousands_of_events_and_large_rows(kinesis: KinesisStream) -> None:
    """Over a thousand small events and rows near the record limit reach the target intact,
    each put once, whether the relay thread or the final drain shipped it. Plain records,
    so each request's records are its events."""
    kinesis.aggregate = False
    log = PutLog()
    with hooked(kinesis.client, *log.hooks()):
        for start in range(0, 1203, 401):
            Counter.objects.bulk_create([Counter(name=f"c{i}") for i in range(start, start + 401)])
        for i in range(8):
            AllTypes.objects.create(text=chr(0x41 + i) * BIG, blob=bytes([i]) * 1000, doc={"i": i})
        drain_and_replay()
    assert sum(len(call) for call in log.calls) == 1203 + 8
    assert all(len(call) <= MAX_PUT_RECORDS for call in log.calls)
    assert all(size <= MAX_PUT_BYTES for size in log.sizes())
    assert len(log.calls) >= 3
    assert_mirrored(Counter, AllTypes)


def _relay_size(batch: OutboxBatch) -> int:
    """Bytes of the batch's only event as relay will put it on the stream."""
    (event,) = batch.events()
    return len(json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode())


@both_databases
def test_event_at_the_record_limit_never_blocks_the_outbox(
    kinesis: KinesisStream, relay_off: None
) -> None:
    """An event whose data fits 1 MiB but not with its partition key must not poison the
    request it shares: it is dead-lettered at relay and its neighbours still ship."""
    row = AllTypes.objects.create(text="")
    OutboxBatch.objects.all().delete()  # only the sized event below matters here
    limit = kinesis.max_record_bytes
    length = limit - 1000
    for _ in range(5):  # size the update's event to exactly the limit (ids shift a digit)
        AllTypes.objects.filter(pk=row.pk).update(text="y" * length)
        batch = OutboxBatch.objects.get()
        if _relay_size(batch) == limit:
            break
        length += limit - _relay_size(batch)
        batch.delete()
    assert _relay_size(OutboxBatch.objects.get()) == limit
    Counter.objects.create(name="neighbour")
    result = relay.drain()
    assert relay.backlog() == 0, f"outbox stuck: {result}"
    letter = DeadLetter.objects.get(stage="relay")
    assert "exceeds" in letter.reason and letter.model == "testapp.AllTypes"
    delivered = [data for shard in stream_records(kinesis).values() for _, data in shard]
    assert [json.loads(d)["model"] for d in delivered] == ["testapp.Counter"]
