"""KPL-aggregated records: relay packs the events bound for one shard into one Kinesis
record, replay unpacks them. Rows converge, a row's events stay on its shard in order
(also after a reshard), a corrupt aggregate is a dead letter, and with
``OPTIONS["aggregate"] = False`` every event is its own plain record again."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import pytest
from django.db import transaction
from django.db.models import F
from django.test import override_settings

from django_mirror.checks.stream import stream_errors
from django_mirror.config import conf
from django_mirror.core.events import Event
from django_mirror.models import DeadLetter, ShardCheckpoint
from django_mirror.pipeline import relay
from django_mirror.pipeline.replay import Replayer
from django_mirror.streams import KinesisStream
from django_mirror.streams.aggregation import (
    MAGIC,
    Aggregate,
    CorruptAggregate,
    deaggregate,
    hash_key,
    is_aggregated,
    varint,
)
from tests.conftest import assert_mirrored, both_databases, drain_and_replay
from tests.faults import (
    RejectRecords,
    ShardReads,
    configured_stream,
    hooked,
    mirror_settings,
    shard_events,
    stream_records,
    unique_stream_name,
)
from tests.testapp.models import Counter

SPLIT_AT = 2**127

#: An aggregated record written by the reference implementation, ``aws-kinesis-agg``
#: 1.2.3 (``RecordAggregator``): two partition keys, an explicit hash key on the second.
REFERENCE = bytes.fromhex(
    "f3899ac20a11746573746170702e636f756e7465723a310a11746573746170702e636f756e7465723a32"
    "120234321a0b08001a077b2261223a317d1a0d080110001a077b2262223a327d1a0b08001a077b226322"
    "3a337d2a9e840202ebbfc60d77405b3a013a88"
)


def assert_rows_in_order_on_their_shard(stream: KinesisStream) -> int:
    """Each row's events are read from the shard its partition key hashes to, with
    versions rising, parents read before children (as replay reads them): a row moves
    to a child shard only after a reshard, never back. Returns the events read."""
    shards = {s.shard_id: s for s in stream.shards()}
    events = shard_events(stream)
    seen: dict[str, str] = {}
    last: dict[str, int] = {}
    done: set[str] = set()
    while len(done) < len(shards):
        for shard in shards.values():
            if shard.shard_id in done or not set(shard.parents) & shards.keys() <= done:
                continue
            low, high = shard.hash_range or (0, 2**128)
            for event in events[shard.shard_id]:
                key = event.partition_key
                assert low <= hash_key(key) <= high, f"{key} read from {shard.shard_id}"
                before = seen.setdefault(key, shard.shard_id)
                assert before in (shard.shard_id, *shard.parents), f"{key} on unrelated shards"
                assert event.version > last.get(key, -1), f"{key} out of order"
                seen[key], last[key] = shard.shard_id, event.version
            done.add(shard.shard_id)
    return sum(len(shard_events) for shard_events in events.values())


def raw_records(stream: KinesisStream) -> list[bytes]:
    return [data for records in stream_records(stream, raw=True).values() for _, data in records]


def update_all(rounds: int) -> None:
    """Every row written ``rounds`` times, one statement (outbox batch) per round."""
    for _ in range(rounds):
        with transaction.atomic():
            Counter.objects.update(value=F("value") + 1)


# --- the format ----------------------------------------------------------------------------


def test_the_reference_implementations_records_are_read() -> None:
    events = deaggregate(REFERENCE)
    assert [(e.partition_key, e.data) for e in events] == [
        ("testapp.counter:1", b'{"a":1}'),
        ("testapp.counter:2", b'{"b":2}'),
        ("testapp.counter:1", b'{"c":3}'),
    ]
    assert [e.hash_key for e in events] == [hash_key("testapp.counter:1"), 42, events[0].hash_key]


def test_a_packed_record_reads_back_and_is_as_big_as_it_said() -> None:
    aggregate = Aggregate()
    items = [(f"testapp.counter:{i % 7}", b"x" * (i * 37 % 300)) for i in range(500)]
    for index, (key, data) in enumerate(items):
        assert aggregate.add(index, key, hash_key(key), data)
    packed = aggregate.encode()
    assert packed.startswith(MAGIC) and len(packed) == aggregate.size
    assert [(e.partition_key, e.data) for e in deaggregate(packed)] == items


def test_an_aggregate_takes_no_record_past_its_size() -> None:
    aggregate = Aggregate(max_bytes=120)
    assert aggregate.add(0, "k:1", hash_key("k:1"), b"x" * 80)
    assert not aggregate.add(1, "k:2", hash_key("k:2"), b"y" * 20)
    assert aggregate.members == [0] and len(aggregate.encode()) == aggregate.size <= 120
    assert [e.data for e in deaggregate(aggregate.encode())] == [b"x" * 80]


@pytest.mark.parametrize(
    "corrupt, reason",
    [
        (lambda r: r[:-1] + bytes([r[-1] ^ 1]), "MD5"),
        (lambda r: r[:30] + bytes([r[30] ^ 0xFF]) + r[31:], "MD5"),
        (lambda r: MAGIC + b"\x1a\x7f" + hashlib.md5(b"\x1a\x7f").digest(), "past the end"),
        (
            lambda r: MAGIC + b"\x1a\x02\x08\x05" + hashlib.md5(b"\x1a\x02\x08\x05").digest(),
            "lacks",
        ),
        (lambda r: MAGIC + b"\xff" * 3, "too short"),
    ],
)
def test_a_corrupt_aggregate_is_refused(corrupt: Any, reason: str) -> None:
    with pytest.raises(CorruptAggregate, match=reason):
        deaggregate(corrupt(REFERENCE))


def test_any_protobuf_behind_a_right_digest_reads_or_is_refused() -> None:
    """Bytes changed, cut or added inside the protobuf (its MD5 made right again): each
    reads as some records or raises CorruptAggregate, never another error."""
    rng = random.Random(7)
    message = REFERENCE[len(MAGIC) : -16]
    for _ in range(3000):
        changed = bytearray(message)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(changed) + 1)
            action = rng.random()
            if action < 0.6 and at < len(changed):
                changed[at] = rng.randrange(256)
            elif action < 0.8:
                del changed[at:]
            else:
                changed.insert(at, rng.randrange(256))
        record = MAGIC + bytes(changed) + hashlib.md5(bytes(changed)).digest()
        try:
            deaggregate(record)
        except CorruptAggregate:
            pass


def test_varints_are_protobufs() -> None:
    assert [varint(n) for n in (0, 1, 127, 128, 300, 2**20)] == [
        b"\x00",
        b"\x01",
        b"\x7f",
        b"\x80\x01",
        b"\xac\x02",
        b"\x80\x80\x40",
    ]


# --- relay and replay ----------------------------------------------------------------------


@both_databases
def test_many_events_round_trip_through_aggregates(aws: None, relay_off: None) -> None:
    """Thousands of events in few records, every row the same on both sides."""
    with configured_stream(stream_name=unique_stream_name(), shard_count=2) as stream:
        Counter.objects.bulk_create([Counter(name=f"c{i}", value=i) for i in range(1500)])
        update_all(2)
        Counter.objects.filter(value__lt=100).delete()
        stats = drain_and_replay(batch_size=700)
        records = raw_records(stream)
        assert len(records) <= 8 and all(r.startswith(MAGIC) for r in records)
        assert stats.read == 1500 * 3 + 98 == stats.applied + stats.stale
        assert not DeadLetter.objects.exists()
    assert_mirrored(Counter)


@both_databases
def test_a_rows_events_stay_on_its_shard_in_order(aws: None, relay_off: None) -> None:
    """Four shards, each row written five times in one put: per row, one shard, rising
    versions; small aggregates so each shard gets several."""
    with configured_stream(
        stream_name=unique_stream_name(), shard_count=4, aggregate_max_bytes=8192
    ) as stream:
        Counter.objects.bulk_create([Counter(name=f"c{i}") for i in range(300)])
        update_all(4)
        relay.drain()
        assert len(raw_records(stream)) > 8
        assert assert_rows_in_order_on_their_shard(stream) == 1500
        Replayer(batch_size=100).run(until_caught_up=True)
    assert_mirrored(Counter)


@both_databases
def test_without_aggregation_each_event_is_its_own_plain_record(aws: None, relay_off: None) -> None:
    with configured_stream(stream_name=unique_stream_name(), aggregate=False) as stream:
        Counter.objects.bulk_create([Counter(name=f"c{i}") for i in range(120)])
        update_all(1)
        drain_and_replay(batch_size=50)
        records = raw_records(stream)
        assert len(records) == 240
        assert all(Event.from_json(data) for data in records)
    assert_mirrored(Counter)


@both_databases
def test_a_lone_event_travels_as_a_plain_record(aws: None, relay_off: None) -> None:
    with configured_stream(stream_name=unique_stream_name()) as stream:
        Counter.objects.create(name="alone")
        relay.drain()
        (record,) = raw_records(stream)
        assert Event.from_json(record).model == "testapp.Counter"


@both_databases
def test_a_refused_aggregate_is_put_again_whole(aws: None, relay_off: None) -> None:
    """Kinesis throttles the aggregate once: all its events go again, each shipped once."""
    with configured_stream(stream_name=unique_stream_name()) as stream:
        Counter.objects.bulk_create([Counter(name=f"c{i}") for i in range(200)])
        reject = RejectRecords(lambda key, data: is_aggregated(data), times=1)
        with hooked(stream.client, *reject.hooks()):
            result = relay.drain()
        assert len(reject.rejected) == 1 and result.events == 200 and not result.kept
        assert len(raw_records(stream)) == 1
        events = [e for shard in shard_events(stream).values() for e in shard]
        assert sorted(e.pk for e in events) == sorted(Counter.objects.values_list("pk", flat=True))
        Replayer().run(until_caught_up=True)
    assert_mirrored(Counter)


@both_databases
def test_bulk_create_of_a_thousand_takes_at_most_fifty_records(aws: None, relay_off: None) -> None:
    with configured_stream(stream_name=unique_stream_name(), shard_count=2) as stream:
        Counter.objects.bulk_create([Counter(name=f"c{i}") for i in range(1000)])
        relay.drain()
        assert len(raw_records(stream)) / 1000 <= 0.05


@both_databases
def test_split_mid_stream_with_aggregation(aws: None, relay_off: None) -> None:
    """A split between two drains: the relay's shard map is stale, rows still converge,
    each row's events are read in order, and the parent before its children."""
    with configured_stream(stream_name=unique_stream_name()) as stream:
        reads = ShardReads()  # moto never ends a closed shard; this does
        with hooked(stream.client, *reads.hooks()):
            Counter.objects.bulk_create([Counter(name=f"c{i}") for i in range(200)])
            update_all(1)
            relay.drain()
            (parent,) = (s.shard_id for s in stream.shards())
            stream.client.split_shard(
                StreamName=stream.name, ShardToSplit=parent, NewStartingHashKey=str(SPLIT_AT)
            )
            update_all(2)
            Counter.objects.bulk_create([Counter(name=f"d{i}") for i in range(100)])
            relay.drain()
            Replayer(batch_size=150).run(until_caught_up=True)
            assert assert_rows_in_order_on_their_shard(stream) == 200 * 4 + 100
        assert ShardCheckpoint.objects.get(consumer="*", shard_id=parent).finished
        for child in {s.shard_id for s in stream.shards()} - {parent}:
            assert reads.end_read(parent) < reads.first_read(child)
        assert not DeadLetter.objects.exists()
    assert_mirrored(Counter)


@both_databases
def test_an_aggregate_that_lands_on_another_shard_is_put_again(aws: None, relay_off: None) -> None:
    """The relay's map knows one shard; the stream now has two (deleted and created
    again). The aggregate lands where its first event's hash key says; the events of
    the other shard are put again there, and replay reads each row from its shard only."""
    with configured_stream(stream_name=unique_stream_name()) as stream:
        rows = Counter.objects.bulk_create([Counter(name=f"c{i}") for i in range(400)])
        relay.drain()  # and the relay's stream lists its shards
        (known,) = stream.shard_map().ranges
        stream.client.delete_stream(StreamName=stream.name)
        stream.client.create_stream(StreamName=stream.name, ShardCount=2)
        (other,) = (s for s in stream.shards() if s.shard_id != known)
        low, high = other.hash_range or (0, 0)
        first = next(row for row in rows if low <= hash_key(f"testapp.counter:{row.pk}") <= high)
        Counter.objects.filter(pk=first.pk).update(value=-1)  # the put's first event
        update_all(1)
        relay.drain()
        stored = {
            shard: len(records) for shard, records in stream_records(stream, raw=True).items()
        }
        assert stored == {known: 1, other.shard_id: 1}
        assert assert_rows_in_order_on_their_shard(stream) == 1 + 400
        Replayer(batch_size=500).run(until_caught_up=True)
    assert_mirrored(Counter)


@both_databases
def test_a_corrupt_aggregate_is_dead_lettered_and_replay_goes_on(
    aws: None, relay_off: None
) -> None:
    with configured_stream(stream_name=unique_stream_name()) as stream:
        Counter.objects.bulk_create([Counter(name=f"before{i}") for i in range(50)])
        relay.drain()
        aggregate = Aggregate()
        for i in range(3):
            key = f"testapp.counter:{10_000 + i}"
            aggregate.add(i, key, hash_key(key), b'{"not": "applied"}')
        packed = aggregate.encode()
        broken = packed[:-1] + bytes([packed[-1] ^ 1])
        stream.client.put_record(StreamName=stream.name, Data=broken, PartitionKey="x")
        Counter.objects.bulk_create([Counter(name=f"after{i}") for i in range(50)])
        relay.drain()
        stats = Replayer(batch_size=40).run(until_caught_up=True)
        (letter,) = DeadLetter.objects.all()
        assert letter.reason == "corrupt aggregated record: MD5 digest does not match"
        assert bytes(letter.payload) == broken and letter.sequence_number
        assert stats.applied == 100
        (checkpoint,) = ShardCheckpoint.objects.filter(consumer="*")
        assert int(checkpoint.sequence_number) > int(letter.sequence_number)
    assert_mirrored(Counter)


# --- the check -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, problems",
    [
        ({"aggregate": False, "aggregate_max_bytes": 500_000}, []),
        ({"aggregate": "no"}, ["['aggregate'] is 'no'"]),
        ({"aggregate_max_bytes": 2**20 + 1}, ["['aggregate_max_bytes'] is 1048577"]),
        ({"aggregate_max_bytes": True}, ["['aggregate_max_bytes'] is True"]),
        ({"aggregate_max_bytes": "1000000"}, ["['aggregate_max_bytes'] is '1000000'"]),
    ],
)
def test_the_check_refuses_aggregation_options_of_the_wrong_type(
    options: dict[str, Any], problems: list[str]
) -> None:
    config = mirror_settings(**options)
    with override_settings(DJANGO_MIRROR=config):
        errors = stream_errors(config["STREAM"], conf.get_settings().stream)
    assert [(e.id, e.msg) for e in errors] == [
        ("django_mirror.E026", f"DJANGO_MIRROR['STREAM']['OPTIONS']{p}.") for p in problems
    ]
