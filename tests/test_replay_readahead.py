"""Replay reads a shard's next batch while it applies this one: the overlap is seen on the
wire (GetRecords calls timed by botocore hooks) and in the databases (queries timed by
Django's execute wrappers), batches are applied in the order each shard gave them, a
lost lease drops what was read ahead, a kill mid-stream resumes without loss, and two
replayers share four shards."""

from __future__ import annotations

import datetime as dt
import json
import random
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.db import connections
from django.db.models import F
from django.utils import timezone

from django_mirror.models import RowVersion, ShardCheckpoint
from django_mirror.pipeline import relay
from django_mirror.pipeline.replay import Replayer
from django_mirror.streams import KinesisStream
from django_mirror.streams.kinesis import MIN_AGGREGATE_BYTES
from tests.conftest import assert_mirrored, both_databases, in_thread
from tests.faults import ShardReads, configured_stream, hooked, stream_records, unique_stream_name
from tests.test_crash import Command
from tests.test_replay import churn
from tests.testapp.models import Counter

CHECKPOINT_TABLE = ShardCheckpoint._meta.db_table


class Timeline:
    """Moments of reads, target queries and checkpoint saves, from every thread."""

    def __init__(self) -> None:
        self.moments: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def note(self, what: str) -> None:
        with self._lock:
            self.moments.append((time.monotonic(), what))


def is_checkpoint_save(sql: str) -> bool:
    return sql.startswith("UPDATE") and CHECKPOINT_TABLE in sql and "sequence_number" in sql


@contextmanager
def watching_queries(
    alias: str, seen: Callable[[str, Any], None], delay: float = 0.0
) -> Iterator[None]:
    """Each query this thread runs on ``alias`` is passed to ``seen`` before it runs,
    then held ``delay`` seconds, as a busier database would hold it."""

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen(sql, params)
        if delay:
            time.sleep(delay)
        return execute(sql, params, many, context)

    with connections[alias].execute_wrapper(wrapper):
        yield


def plain_stream(**options: Any) -> Any:
    return configured_stream(stream_name=unique_stream_name(), aggregate=False, **options)


@both_databases
def test_the_next_batch_is_read_while_this_one_is_applied(aws: None) -> None:
    """A read takes 50 ms on the wire and each target query 5 ms: the read of batch N+1
    is under way while batch N's queries run, which reading and applying in turn never
    does."""
    with plain_stream() as stream:
        Counter.objects.bulk_create([Counter(name=f"c{i}") for i in range(120)])
        relay.drain()
        timeline = Timeline()

        def slow_read(**kwargs: Any) -> None:
            timeline.note("read")
            time.sleep(0.05)

        def read_done(**kwargs: Any) -> None:
            timeline.note("read done")

        def on_target(sql: str, params: Any) -> None:
            timeline.note("apply")

        def on_source(sql: str, params: Any) -> None:
            if is_checkpoint_save(sql):
                timeline.note("checkpoint")

        with ExitStack() as stack:
            stack.enter_context(
                hooked(
                    stream.client,
                    ("before-call.kinesis.GetRecords", slow_read),
                    ("after-call.kinesis.GetRecords", read_done),
                )
            )
            stack.enter_context(watching_queries("new", on_target, delay=0.005))
            stack.enter_context(watching_queries("default", on_source))
            Replayer(batch_size=20).run(until_caught_up=True)
    assert_mirrored(Counter)

    # Each batch's apply: from its first target query to its checkpoint save.
    windows: list[tuple[float, float]] = []
    first: float | None = None
    for moment, what in timeline.moments:
        if what == "apply" and first is None:
            first = moment
        elif what == "checkpoint" and first is not None:
            windows.append((first, moment))
            first = None
    reads: list[tuple[float, float]] = []
    started: float | None = None
    for moment, what in timeline.moments:
        if what == "read":
            started = moment
        elif what == "read done" and started is not None:
            reads.append((started, moment))
    assert len(windows) == 6, windows
    overlapped = [
        any(start < end and read_end > begin for start, read_end in reads) for begin, end in windows
    ]
    # The last batch may find nothing left to read ahead of it.
    assert all(overlapped[:-1]), overlapped


@both_databases
def test_each_shard_is_applied_in_the_order_it_was_read(aws: None) -> None:
    """Four shards read at once: every shard's checkpoints name, in order, the last record
    of each read that returned records, none skipped, none repeated out of turn."""
    with plain_stream(shard_count=4) as stream:
        Counter.objects.bulk_create([Counter(name=f"c{i}") for i in range(150)])
        churn(random.Random(21), 150)
        relay.drain()
        read_ends: dict[str, list[str]] = defaultdict(list)

        def last_of_each_read(shard: str, parsed: dict[str, Any]) -> None:
            if parsed["Records"]:
                read_ends[shard].append(parsed["Records"][-1]["SequenceNumber"])

        saved: list[tuple[int, str]] = []

        def on_source(sql: str, params: Any) -> None:
            if is_checkpoint_save(sql):  # SET sequence_number = %s, ... WHERE ... AND id = %s
                saved.append((params[-1], params[0]))

        with (
            hooked(stream.client, *ShardReads(last_of_each_read).hooks()),
            watching_queries("default", on_source),
        ):
            Replayer(batch_size=15).run(until_caught_up=True)
    shard_of = dict(ShardCheckpoint.objects.values_list("pk", "shard_id"))
    per_shard: dict[str, list[str]] = defaultdict(list)
    for pk, sequence in saved:
        shard = shard_of[pk]
        if sequence and (not per_shard[shard] or per_shard[shard][-1] != sequence):
            per_shard[shard].append(sequence)
    assert sum(1 for ends in read_ends.values() if len(ends) > 2) >= 3, read_ends
    assert dict(per_shard) == dict(read_ends)
    assert_mirrored(Counter)


@both_databases
def test_a_lease_lost_while_reading_ahead_drops_the_batch_read_ahead(aws: None) -> None:
    """Another process takes the shard while batch 1 is applied and batch 2 already read:
    batch 1's checkpoint is refused, batch 2 is never applied, its reader ends."""
    with plain_stream() as stream:
        Counter.objects.bulk_create([Counter(name=f"c{i}") for i in range(60)])
        relay.drain()
        responses: list[list[int]] = []

        def keys_read(shard: str, parsed: dict[str, Any]) -> None:
            responses.append([json.loads(r["Data"])["pk"] for r in parsed["Records"]])

        replayer = Replayer(batch_size=10)
        replayer.idle_sleep = 0.05
        taken = threading.Event()
        readers_left: list[str] = []

        def finish() -> None:
            readers_left.extend(
                t.name for t in threading.enumerate() if t.name.startswith("django-mirror-replay")
            )
            replayer.stop = True

        def on_target(sql: str, params: Any) -> None:
            if taken.is_set():
                return
            taken.set()
            time.sleep(0.3)  # batch 2 is read meanwhile
            ShardCheckpoint.objects.update(
                lease_owner="elsewhere:1:0000",
                lease_expires=timezone.now() + dt.timedelta(minutes=5),
            )
            threading.Timer(1.0, finish).start()

        with (
            hooked(stream.client, *ShardReads(keys_read).hooks()),
            watching_queries("new", on_target),
        ):
            replayer.run()
    assert len(responses) >= 2 and responses[1], responses  # batch 2 was read ahead
    applied = set(Counter.objects.using("new").values_list("pk", flat=True))
    assert set(responses[0]) <= applied
    assert not set(responses[1]) & applied
    assert not readers_left
    (checkpoint,) = ShardCheckpoint.objects.all()
    assert checkpoint.lease_owner == "elsewhere:1:0000" and not checkpoint.sequence_number


def newest_versions(records: list[tuple[str, bytes]], up_to: int) -> dict[str, int]:
    newest: dict[str, int] = {}
    for sequence, data in records:
        if int(sequence) <= up_to:
            event = json.loads(data)
            key = str(event["pk"])
            newest[key] = max(newest.get(key, -1), event["version"])
    return newest


@pytest.fixture
def four_shards(moto_server: str) -> Iterator[KinesisStream]:
    with configured_stream(
        endpoint_url=moto_server,
        stream_name=unique_stream_name(),
        shard_count=4,
        aggregate_max_bytes=MIN_AGGREGATE_BYTES,
    ) as stream:
        yield stream


@both_databases
def test_replay_killed_while_reading_ahead_on_four_shards_resumes_without_loss(
    four_shards: KinesisStream, tmp_path: Path
) -> None:
    """SIGKILL while every shard has a batch read ahead: no checkpoint names a record the
    target lacks, and a restart converges."""
    for start in range(0, 2000, 500):
        Counter.objects.bulk_create([Counter(name=f"c{i}") for i in range(start, start + 500)])
    Counter.objects.filter(pk__in=list(Counter.objects.values_list("pk", flat=True))[::7]).update(
        value=F("value") + 3
    )
    relay.drain()

    def progress() -> int:
        return ShardCheckpoint.objects.filter(consumer="*").exclude(sequence_number="").count()

    replay = Command(
        four_shards, tmp_path, "mirror_replay", "--until-caught-up", "--batch-size", "40"
    )
    replay.wait_until(lambda: progress() >= 2)
    assert replay.kill(signal.SIGKILL) == -signal.SIGKILL
    reached = dict(
        ShardCheckpoint.objects.filter(consumer="*").values_list("shard_id", "sequence_number")
    )
    records = stream_records(four_shards)
    assert any(reached.get(shard) != held[-1][0] for shard, held in records.items() if held), (
        "not killed mid-way"
    )
    applied = dict(
        RowVersion.objects.using("new")
        .filter(model="testapp.counter")
        .values_list("pk_value", "version")
    )
    for shard, held in records.items():
        for pk, version in newest_versions(held, int(reached.get(shard) or 0)).items():
            assert applied.get(pk, -1) >= version, f"{shard}: checkpoint passed row {pk}"

    restart = Command(four_shards, tmp_path, "mirror_replay", "--until-caught-up")
    assert restart.finish() == 0, restart.output()
    assert_mirrored(Counter)


@both_databases
def test_two_replayers_split_four_shards_and_converge(aws: None) -> None:
    """Two replayers in one process (threads, each with its own connections) hold two
    shards each, and between them replay everything, also what is written meanwhile."""
    with configured_stream(stream_name=unique_stream_name(), shard_count=4):
        Counter.objects.bulk_create([Counter(name=f"a{i}") for i in range(300)])
        relay.drain()
        replayers = [Replayer(batch_size=25), Replayer(batch_size=25)]
        for replayer in replayers:
            replayer.idle_sleep = 0.05
        errors: list[BaseException] = []
        threads = [in_thread(r.run, errors) for r in replayers]
        owners = {r.leases.owner for r in replayers}
        try:
            deadline = time.monotonic() + 60
            split = False
            while time.monotonic() < deadline and not errors:
                held = list(ShardCheckpoint.objects.values_list("lease_owner", flat=True))
                split = split or sorted(held.count(o) for o in owners) == [2, 2]
                if split and Counter.objects.using("new").count() == 300:
                    break
                time.sleep(0.05)
            assert split and not errors, (held, errors)
            churn(random.Random(22), 80)
            relay.drain()
            expected = set(Counter.objects.values_list("pk", "value"))
            while time.monotonic() < deadline and not errors:
                if set(Counter.objects.using("new").values_list("pk", "value")) == expected:
                    break
                time.sleep(0.05)
        finally:
            for replayer in replayers:
                replayer.stop = True
            for thread in threads:
                thread.join(30)
    assert not errors, errors
    assert_mirrored(Counter)


@both_databases
def test_the_first_read_of_an_aggregated_shard_takes_one_record(aws: None) -> None:
    """Before a shard's events per record are known, a read asks for one aggregated
    record, not a batch size of them (which could be the whole shard in one batch)."""
    with configured_stream(
        stream_name=unique_stream_name(), aggregate_max_bytes=MIN_AGGREGATE_BYTES
    ) as stream:
        for start in range(0, 600, 100):
            Counter.objects.bulk_create([Counter(name=f"c{i}") for i in range(start, start + 100)])
        relay.drain()
        (shard,) = stream.shards()
        position = stream.position(shard.shard_id, None)
        first = stream.read(shard.shard_id, position, 100)
        assert len(first.sequences) == 1 and len(first.records) > 1
        second = stream.read(shard.shard_id, first.next_position, 100)
        # Then about ``limit`` events, in whole records.
        assert 1 < len(second.sequences) and len(second.records) < 200
