"""Replay at the stream's pace: replay end to end against a raw read of the same stream,
two replay processes against one, and commit-to-target latency with relay and replay
running.

moto's threaded server runs in a process of its own (``moto_server``), as Kinesis runs
on machines of its own. The stream has four shards and holds one plain Kinesis record
per event (``aggregate`` off), the form in which reading costs the most per event.

- **end to end**: ``Replayer().reset()`` then ``run(until_caught_up=True)`` in this
  process (what ``mirror_replay --from-start --until-caught-up`` runs) into an emptied
  target, against a boto3 loop that reads every shard from ``TRIM_HORIZON`` with
  ``GetRecords`` of the same size until it is caught up, alternating round by round.
- **two processes**: one and then two ``Replayer`` processes (this module run as a
  script) share the shards through their leases; each round starts from no checkpoints
  and an emptied target, the processes set up before the clock starts, and the time runs
  until every shard's checkpoint names its last record.
- **latency**: ``mirror_relay`` and ``mirror_replay`` run as processes with their default
  intervals while this process commits one ``save()`` at a time at a steady pace; a
  thread polls the target every few milliseconds and notes when each row arrives.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Outcome,
    Row,
    interleaved,
    kinesis_records,
    log,
    median_ratio,
    shard_pages,
    spread,
    stop_process,
)

END_TO_END_TARGET = 0.8
TWO_PROCESSES_TARGET = 1.6
SHARDS = 4
BATCH = 1_000
ROOT = Path(__file__).resolve().parent.parent
#: ``user_id`` of the rows the latency run writes, above those the stream was filled with.
BASE = 10_000_000


def mirror_settings(endpoint: str, stream_name: str, aggregate: bool = False) -> dict[str, Any]:
    """The benchmark settings pointed at one of this run's streams."""
    from django.conf import settings

    mirror = {**settings.DJANGO_MIRROR, "STREAM": {**settings.DJANGO_MIRROR["STREAM"]}}
    mirror["STREAM"]["OPTIONS"] = {
        **settings.DJANGO_MIRROR["STREAM"]["OPTIONS"],
        "stream_name": stream_name,
        "endpoint_url": endpoint,
        "shard_count": SHARDS,
        "aggregate": aggregate,
    }
    return mirror


def last_sequences(client: Any, stream_name: str) -> dict[str, str]:
    """Each shard's last record: where a checkpoint stands once it is replayed."""
    return {
        shard_id: records[-1]["SequenceNumber"]
        for shard_id, records in shard_pages(client, stream_name)
        if records
    }


def empty_target() -> None:
    """No replayed row, version or checkpoint: the next replay starts from scratch."""
    from benchmarks.benchapp.models import Follow
    from django_mirror.capture.record import paused
    from django_mirror.models import RowVersion, ShardCheckpoint

    with paused():
        Follow.objects.using("new").all().delete()
        RowVersion.objects.using("new").all().delete()
    ShardCheckpoint.objects.all().delete()


def fill(count: int, start: int) -> None:
    """``count`` captured ``Follow`` rows in the outbox, 1,000 per ``bulk_create``."""
    import datetime as dt

    from django.db import transaction

    from benchmarks.benchapp.models import Follow

    now = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    for first in range(start, start + count, 1_000):
        rows = [
            Follow(user_id=n, channel_id=n % 1_000, created_at=now, origin="web")
            for n in range(first, min(first + 1_000, start + count))
        ]
        with transaction.atomic():
            Follow.objects.bulk_create(rows)


class Worker:
    """This module run as a script: a replay (or relay) process on this run's stream."""

    def __init__(self, role: str, endpoint: str, stream: str, aggregate: bool, work: Path) -> None:
        self.ready = work / f"ready-{uuid.uuid4().hex[:8]}"
        config = {"endpoint": endpoint, "stream": stream, "aggregate": aggregate}
        config.update(ready=str(self.ready), go=str(work / "go"))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.replay_stream", role, json.dumps(config)],
            cwd=ROOT,
            env=os.environ.copy(),
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start ({self.process.returncode})")
            time.sleep(0.01)

    def stop(self) -> None:
        stop_process(self.process)


@contextmanager
def workers(
    role: str, count: int, endpoint: str, stream: str, work: Path, aggregate: bool = False
) -> Iterator[Path]:
    """``count`` workers started and ready; yields the file whose creation starts them."""
    go = work / "go"
    go.unlink(missing_ok=True)
    started = [Worker(role, endpoint, stream, aggregate, work) for _ in range(count)]
    try:
        for worker in started:
            worker.wait_ready()
        yield go
    finally:
        for worker in started:
            worker.stop()
        go.unlink(missing_ok=True)


def replayed_to(last: dict[str, str], stream: str) -> bool:
    from django_mirror.models import ShardCheckpoint

    reached = dict(
        ShardCheckpoint.objects.filter(consumer="*", stream=stream).values_list(
            "shard_id", "sequence_number"
        )
    )
    return all(reached.get(shard) == sequence for shard, sequence in last.items())


def processes_time(count: int, endpoint: str, stream: str, work: Path, last: dict) -> float:
    """Seconds ``count`` replay processes take to replay the stream from its start."""
    empty_target()
    with workers("replay", count, endpoint, stream, work, aggregate=True) as go:
        started = time.perf_counter()
        go.touch()
        deadline = started + 300
        while not replayed_to(last, stream):
            if time.perf_counter() > deadline:
                raise RuntimeError("the replay processes did not finish")
            time.sleep(0.01)
        return time.perf_counter() - started


def latencies(endpoint: str, stream: str, work: Path, writes: int, pace: float) -> list[float]:
    """Seconds from each ``save()``'s commit to its row's arrival in the target."""
    import datetime as dt

    from django.db import connections, transaction

    from benchmarks.benchapp.models import Follow

    arrived: dict[int, float] = {}
    done = threading.Event()

    def poll() -> None:
        table = connections["new"].ops.quote_name(Follow._meta.db_table)
        try:
            while not done.is_set():
                with connections["new"].cursor() as cursor:
                    # Shards are applied in any order: every written row, not the newest.
                    cursor.execute(f"SELECT id FROM {table} WHERE user_id >= %s", [BASE])
                    now = time.time()
                    for (pk,) in cursor.fetchall():
                        arrived.setdefault(pk, now)
                time.sleep(0.002)
        finally:
            connections.close_all()

    committed: dict[int, float] = {}
    now = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    empty_target()
    poller = threading.Thread(target=poll, daemon=True)
    with workers("relay", 1, endpoint, stream, work, aggregate=True) as go_relay:
        go_relay.touch()
        with workers("replay", 1, endpoint, stream, work, aggregate=True) as go:
            go.touch()
            poller.start()
            time.sleep(2.0)  # both running and idle, as in production
            for i in range(writes):
                with transaction.atomic():
                    row = Follow.objects.create(
                        user_id=BASE + i, channel_id=i, created_at=now, origin="web"
                    )
                committed[row.pk] = time.time()
                time.sleep(pace)
            deadline = time.monotonic() + 60
            while not all(pk in arrived for pk in committed) and time.monotonic() < deadline:
                time.sleep(0.05)
            done.set()
            poller.join(10)
    missing = [pk for pk in committed if pk not in arrived]
    if missing:
        raise RuntimeError(f"{len(missing)} rows never reached the target")
    return sorted(arrived[pk] - committed[pk] for pk in committed)


def percentile(values: list[float], fraction: float) -> float:
    return sorted(values)[min(len(values) - 1, int(fraction * len(values)))]


def run(db: str, quick: bool) -> Outcome:
    from django.test import override_settings

    from benchmarks.moto_server import moto_process
    from django_mirror.pipeline import relay
    from django_mirror.pipeline.replay import Replayer
    from django_mirror.streams import get_stream

    events = 8_000 if quick else 40_000
    #: Aggregated events for the two-process row: apply, not reading, is the work.
    applied_events = 10_000 if quick else 100_000
    rounds = 2 if quick else 4
    process_rounds = 1 if quick else 3
    writes = 60 if quick else 300
    work = Path(os.environ.get("BENCH_DIR", "/tmp")) / "replay-stream"
    work.mkdir(parents=True, exist_ok=True)
    outcome = Outcome()

    with moto_process() as (endpoint, _):
        stream_name = f"replay-bench-{uuid.uuid4().hex[:8]}"
        with override_settings(DJANGO_MIRROR=mirror_settings(endpoint, stream_name)):
            stream = get_stream()
            stream.create()
            log(f"replay-stream: filling a {SHARDS}-shard stream with {events:,} events")
            fill(events, 1)
            relay.drain()
            client = stream.client
            assert kinesis_records(client, stream_name, 10_000) == events
            last = last_sequences(client, stream_name)

            # --- end to end vs raw read --------------------------------------------------
            def replay(_: object) -> None:
                replayer = Replayer(batch_size=BATCH)
                replayer.reset()
                stats = replayer.run(until_caught_up=True)
                assert stats.read == events and stats.applied == events, stats

            def read(_: object) -> None:
                assert kinesis_records(client, stream_name, BATCH) == events

            log("replay-stream: end to end vs raw read")
            ours, raw = interleaved(
                [(empty_target, replay), (lambda: None, read)], rounds=rounds, warmup=1
            )
            ratios = [r / o for r, o in zip(raw, ours, strict=True)]
            ratio = median_ratio(raw, ours)
            outcome.rows.append(
                Row(
                    "replay-stream: end to end vs raw boto3 GetRecords of the same stream",
                    db,
                    f"{ratio:.2f}x",
                    f">= {END_TO_END_TARGET}x",
                    ratio >= END_TO_END_TARGET,
                    ratio,
                )
            )
            outcome.notes.append(
                f"replay-stream end to end [{db}]: {events:,} plain records on {SHARDS} shards, "
                f"reads of {BATCH:,}; replay {statistics.median(ours):.2f} s "
                f"({events / statistics.median(ours):,.0f} events/s), raw read "
                f"{statistics.median(raw):.2f} s; ratios {spread(ratios)} over {len(ratios)} "
                "rounds."
            )

        # --- two processes vs one: aggregated records, cheap to read, so apply is the work
        aggregated = f"replay-bench-agg-{uuid.uuid4().hex[:8]}"
        with override_settings(DJANGO_MIRROR=mirror_settings(endpoint, aggregated, True)):
            stream = get_stream()
            stream.create()
            fill(applied_events, events + 1)
            relay.drain()
            last = last_sequences(stream.client, aggregated)
            log("replay-stream: two replay processes vs one")
            one: list[float] = []
            two: list[float] = []
            for round_ in range(process_rounds + 1):
                order = (1, 2) if round_ % 2 else (2, 1)
                for count in order:
                    elapsed = processes_time(count, endpoint, aggregated, work, last)
                    if round_:
                        (one if count == 1 else two).append(elapsed)
            pair = [o / t for o, t in zip(one, two, strict=True)]
            speedup = median_ratio(one, two)
            outcome.rows.append(
                Row(
                    f"replay-stream: two replay processes on {SHARDS} shards vs one",
                    db,
                    f"{speedup:.2f}x",
                    f">= {TWO_PROCESSES_TARGET}x",
                    speedup >= TWO_PROCESSES_TARGET,
                    speedup,
                )
            )
            outcome.notes.append(
                f"replay-stream processes [{db}]: {applied_events:,} events in aggregated "
                "records, one process "
                f"{statistics.median(one):.2f} s, two {statistics.median(two):.2f} s; "
                f"ratios {spread(pair)} over {len(pair)} rounds, on {os.cpu_count()} CPUs "
                "shared with moto's process."
            )

        # --- commit-to-target latency: a stream of its own, default (aggregated) records
        fresh = f"replay-bench-latency-{uuid.uuid4().hex[:8]}"
        with override_settings(DJANGO_MIRROR=mirror_settings(endpoint, fresh, True)):
            get_stream().create()
            log(f"replay-stream: latency of {writes} single saves")
            seconds = latencies(endpoint, fresh, work, writes, pace=0.05)
            p50, p99 = percentile(seconds, 0.5) * 1000, percentile(seconds, 0.99) * 1000
            outcome.rows.append(
                Row(
                    "replay-stream: commit-to-target latency, mirror_relay + replay, p50 / p99",
                    db,
                    f"{p50:,.0f} / {p99:,.0f} ms",
                    "reported",
                    True,
                    p50,
                )
            )
            outcome.notes.append(
                f"replay-stream latency [{db}]: {writes} saves, one every 50 ms, to a fresh "
                "stream (aggregated records); relay and "
                f"replay processes with their default idle intervals (relay 0.5 s, replay "
                f"1.0 s); min {min(seconds) * 1000:,.0f} ms, max {max(seconds) * 1000:,.0f} ms."
            )
    return outcome


# --- worker processes ----------------------------------------------------------------------


def worker(role: str, config: dict[str, Any]) -> int:
    """A replay or relay process on the parent's stream, started once ``go`` exists."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    django.setup()
    from django.core.management import call_command
    from django.test import override_settings

    from django_mirror.pipeline.replay import Replayer

    mirror = mirror_settings(config["endpoint"], config["stream"], config["aggregate"])
    with override_settings(DJANGO_MIRROR=mirror):
        replayer = Replayer(batch_size=BATCH) if role == "replay" else None
        Path(config["ready"]).touch()
        go = Path(config["go"])
        while not go.exists():
            time.sleep(0.002)
        if replayer is None:
            call_command("mirror_relay", verbosity=0)
            return 0

        def stop(*_: object) -> None:
            replayer.stop = True

        signal.signal(signal.SIGTERM, stop)
        replayer.run()
    return 0


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1], json.loads(sys.argv[2])))
