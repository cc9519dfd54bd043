"""Replay against the stream as Kinesis really delivers it: many shards, resharding
mid-stream, expired iterators, duplicated and reordered records, a broken target, and
the command-line flags a runbook uses."""

from __future__ import annotations

import json
import random
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connections, transaction
from django.db.models import F

from django_mirror.models import DeadLetter, RowVersion, ShardCheckpoint
from django_mirror.pipeline import relay
from django_mirror.pipeline.replay import Replayer
from django_mirror.streams import KinesisStream
from django_mirror.streams.kinesis import MIN_AGGREGATE_BYTES
from tests.conftest import assert_mirrored, both_databases, drain_and_replay, rows
from tests.faults import (
    DuplicateAndShuffle,
    FailReadsAt,
    ShardReads,
    configured_stream,
    hooked,
    stream_records,
    unique_stream_name,
)
from tests.testapp.models import Author, Book, Counter

SPLIT_AT = str(2**127)


def churn(rng: random.Random, rounds: int, names: int = 40) -> None:
    """Creates, F() updates, deletes and re-inserts of the same unique names, each its own
    transaction, so versions, tombstones and unique values all get exercised."""
    for _ in range(rounds):
        name = f"n{rng.randrange(names)}"
        with transaction.atomic():
            counter = Counter.objects.filter(name=name).first()
            action = rng.random()
            if counter is None:
                Counter.objects.create(name=name, value=rng.randrange(100))
            elif action < 0.5:
                Counter.objects.filter(pk=counter.pk).update(value=F("value") + 1)
            elif action < 0.7:
                counter.value = F("value") * 2
                counter.save(update_fields=["value"])
            elif action < 0.9:
                counter.delete()
            else:
                counter.delete()
                Counter.objects.create(name=name, value=-1)


def checkpoints(consumer: str = "*") -> dict[str, str]:
    return dict(
        ShardCheckpoint.objects.filter(consumer=consumer).values_list("shard_id", "sequence_number")
    )


@both_databases
def test_every_shard_of_a_multi_shard_stream_is_replayed(aws: None) -> None:
    """Events spread over four shards all reach the target; each shard gets a checkpoint."""
    with configured_stream(stream_name=unique_stream_name(), shard_count=4) as stream:
        Counter.objects.bulk_create([Counter(name=f"c{i}") for i in range(200)])
        churn(random.Random(1), 150)
        relay.drain()
        per_shard = {shard: len(records) for shard, records in stream_records(stream).items()}
        assert len(per_shard) == 4 and sum(1 for n in per_shard.values() if n) >= 3
        stats = Replayer(batch_size=50).run(until_caught_up=True)
        assert stats.read == sum(per_shard.values())
        positions = checkpoints()
        assert set(positions) == set(per_shard)
        assert all(positions[shard] for shard, n in per_shard.items() if n)
    assert_mirrored(Counter)


@pytest.mark.parametrize("seed", [13, 14])
@both_databases
def test_unique_values_moving_between_rows_on_different_shards(aws: None, seed: int) -> None:
    """A name freed by one row and taken by another travels on two shards, which replay
    interleaves: whichever arrives first, the newer row must keep the name in the target."""
    with configured_stream(stream_name=unique_stream_name(), shard_count=4):
        churn(random.Random(seed), 200, names=8)
        drain_and_replay(batch_size=10)
        assert not DeadLetter.objects.exists()
    assert_mirrored(Counter)


@both_databases
def test_split_mid_stream_replays_parent_before_children(aws: None) -> None:
    """A shard split between two runs: the parent is read to its end before either child."""
    with configured_stream(stream_name=unique_stream_name()) as stream:
        reads = ShardReads()
        with hooked(stream.client, *reads.hooks()):
            churn(random.Random(2), 120)
            drain_and_replay(batch_size=25)
            (parent,) = checkpoints()
            stream.client.split_shard(
                StreamName=stream.name, ShardToSplit=parent, NewStartingHashKey=SPLIT_AT
            )
            churn(random.Random(3), 120)
            reads.reads.clear()
            drain_and_replay(batch_size=25)
        children = set(checkpoints()) - {parent}
        assert len(children) == 2
        assert ShardCheckpoint.objects.get(consumer="*", shard_id=parent).finished
        for child in children:
            assert reads.end_read(parent) < reads.first_read(child)
    assert_mirrored(Counter)


@both_databases
def test_merge_mid_stream_replays_both_parents_before_the_child(aws: None) -> None:
    """Two shards merged with events on both sides of the merge, replayed from the start."""
    with configured_stream(stream_name=unique_stream_name(), shard_count=2) as stream:
        churn(random.Random(4), 120)
        relay.drain()
        first, second = sorted(s.shard_id for s in stream.shards())
        stream.client.merge_shards(
            StreamName=stream.name, ShardToMerge=first, AdjacentShardToMerge=second
        )
        churn(random.Random(5), 120)
        relay.drain()
        reads = ShardReads()
        with hooked(stream.client, *reads.hooks()):
            Replayer(batch_size=25).run(until_caught_up=True)
        (child,) = set(checkpoints()) - {first, second}
        assert reads.end_read(first) < reads.first_read(child)
        assert reads.end_read(second) < reads.first_read(child)
    assert_mirrored(Counter)


@both_databases
def test_expired_iterator_is_renewed_from_the_checkpoint(kinesis: KinesisStream) -> None:
    """The iterator held between batches expires: replay asks for a new one and misses nothing.
    Small aggregates, so the stream holds many records to read batch after batch."""
    kinesis.aggregate_max_bytes = MIN_AGGREGATE_BYTES
    churn(random.Random(6), 150)
    relay.drain()
    expire = FailReadsAt({3})
    reads = ShardReads()
    with hooked(kinesis.client, *reads.hooks(), *expire.hooks()):
        Replayer(batch_size=20).run(until_caught_up=True)
    assert expire.failed == 1
    # the first position; at renewal, a look at the checkpoint's record, then the new one
    assert len(reads.positioned) == 3
    assert_mirrored(Counter)


@pytest.mark.parametrize("aggregate, duplicates", [(False, 100), (True, 40)])
@both_databases
def test_duplicated_and_shuffled_records_converge(
    aws: None, aggregate: bool, duplicates: int
) -> None:
    """Every response carries duplicates, re-deliveries of older records, in random order;
    plain records, or small aggregates (fewer records, so fewer duplicates)."""
    with configured_stream(
        stream_name=unique_stream_name(),
        shard_count=3,
        aggregate=aggregate,
        aggregate_max_bytes=MIN_AGGREGATE_BYTES,
    ) as stream:
        ada = Author.objects.create(name="Ada")
        books = Book.objects.bulk_create(
            [Book(author=ada, title=f"b{i}", pages=i, isbn=f"isbn-{i}") for i in range(30)]
        )
        churn(random.Random(7), 250, names=25)
        for book in books[::4]:
            Book.objects.filter(pk=book.pk).update(pages=F("pages") + 100)
        Book.objects.filter(pk__in=[b.pk for b in books[::5]]).delete()
        relay.drain()
        shuffle = DuplicateAndShuffle(seed=8, rate=0.4)
        with hooked(stream.client, *ShardReads(shuffle).hooks()):
            Replayer(batch_size=20).run(until_caught_up=True)
        assert shuffle.added > duplicates
    assert_mirrored(Author, Book, Counter)


@both_databases
def test_model_filter_keeps_its_own_checkpoints(kinesis: KinesisStream) -> None:
    """``--model`` replays one model only, and a later full replay still gets everything."""
    Author.objects.bulk_create([Author(name=f"a{i}") for i in range(10)])
    churn(random.Random(9), 60)
    relay.drain()
    call_command("mirror_replay", "--model", "testapp.Author", "--until-caught-up", verbosity=0)
    assert_mirrored(Author)
    assert not Counter.objects.using("new").exists()
    assert set(ShardCheckpoint.objects.values_list("consumer", flat=True)) == {"testapp.author"}
    call_command("mirror_replay", "--until-caught-up", verbosity=0)
    assert set(ShardCheckpoint.objects.values_list("consumer", flat=True)) == {
        "testapp.author",
        "*",
    }
    assert_mirrored(Author, Counter)


@both_databases
def test_from_start_replays_everything_and_changes_nothing(kinesis: KinesisStream) -> None:
    """A second, full replay reads every record again and leaves the target as it was."""
    churn(random.Random(10), 120)
    relay.drain()
    out = StringIO()
    call_command("mirror_replay", "--until-caught-up", stdout=out)
    assert "events/s" in out.getvalue()  # the progress line
    before = rows(Counter, "new"), sorted(RowVersion.objects.using("new").values_list())
    total = sum(len(records) for records in stream_records(kinesis).values())
    out = StringIO()
    call_command("mirror_replay", "--from-start", "--until-caught-up", "--json", stdout=out)
    stats = json.loads(out.getvalue())
    assert stats["read"] == total and stats["applied"] == 0 and stats["dead_letters"] == 0
    assert (rows(Counter, "new"), sorted(RowVersion.objects.using("new").values_list())) == before
    assert_mirrored(Counter)


@both_databases
def test_checkpoint_never_passes_an_event_the_target_did_not_apply(
    kinesis: KinesisStream,
) -> None:
    """With the target's table gone, replay fails without moving its checkpoint or
    dead-lettering; once the table is back the same events are applied."""
    churn(random.Random(11), 60)
    drain_and_replay()
    before = checkpoints()
    churn(random.Random(12), 60)
    relay.drain()
    table = Counter._meta.db_table
    with connections["new"].schema_editor() as editor:
        editor.alter_db_table(Counter, table, f"{table}_away")
    try:
        with pytest.raises(CommandError, match="replay failed"):
            call_command("mirror_replay", "--until-caught-up", "--batch-size", "10", verbosity=0)
    finally:
        with connections["new"].schema_editor() as editor:
            editor.alter_db_table(Counter, f"{table}_away", table)
    assert checkpoints() == before
    assert not DeadLetter.objects.exists()
    assert not ShardCheckpoint.objects.exclude(lease_owner="").exists()  # lease released
    call_command("mirror_replay", "--until-caught-up", verbosity=0)
    assert checkpoints() != before
    assert_mirrored(Counter)


@both_databases
def test_an_idle_replay_reports_only_on_change_or_every_quiet_interval(
    kinesis: KinesisStream,
) -> None:
    """What ``mirror_replay`` without a terminal does once a minute, at half a second:
    while nothing changes, one line per interval, not one per round; a change is told."""
    import threading
    import time

    lines: list[tuple[float, int]] = []
    replayer = Replayer(
        progress=lambda stats: lines.append((time.monotonic(), stats.applied)),
        progress_every=0.01,
        quiet_every=0.5,
    )
    replayer.idle_sleep = 0.01  # about a hundred rounds a second
    worker = threading.Thread(target=replayer.run)
    worker.start()
    try:
        time.sleep(1.6)
        idle = len(lines)
        Author.objects.create(name="news")
        relay.drain()
        deadline = time.monotonic() + 10
        while not Author.objects.using("new").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        stopped = time.monotonic()
    finally:
        replayer.stop = True
        worker.join(30)
    assert 2 <= idle <= 6, idle
    assert any(t < stopped and applied for t, applied in lines), lines
