"""Relay throughput with KPL-aggregated records: how many Kinesis records it spends per
event, and how many events one relay process ships per second.

The outbox is filled with ``bulk_create(1,000)`` batches of ``Follow`` rows (relay
off), then ``relay.drain()`` ships them to a 4-shard stream on moto's threaded server,
which runs in a process of its own (as Kinesis runs on machines of its own: in this
process its request handling would take the interpreter lock and be billed to the
relay). Records per event counts the Kinesis records the stream holds after one
``bulk_create(1,000)`` was shipped; events/s is the events shipped over the wall time of
``drain()``, with the relay's own CPU time beside it in the notes.
"""

from __future__ import annotations

import datetime as dt
import itertools
import statistics
import time
import uuid
from typing import Any

from benchmarks.common import Outcome, Row, kinesis_records, log

RECORDS_PER_EVENT_TARGET = 0.05
EVENTS_PER_SECOND_TARGET = 100_000
BULK = 1_000
SHARDS = 4


def run(db: str, quick: bool) -> Outcome:
    from django.conf import settings
    from django.db import transaction
    from django.test import override_settings

    from benchmarks.benchapp.models import Follow
    from benchmarks.moto_server import moto_process
    from django_mirror.models import OutboxBatch
    from django_mirror.pipeline import relay
    from django_mirror.streams import get_stream

    batches = 10 if quick else 100
    rounds = 2 if quick else 3
    numbers = itertools.count(1)
    now = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)

    def fill(count: int) -> None:
        """``count`` bulk_create(1,000) batches in the outbox."""
        for _ in range(count):
            rows = [
                Follow(user_id=n, channel_id=n % 1_000, created_at=now, origin="web")
                for n in itertools.islice(numbers, BULK)
            ]
            with transaction.atomic():
                Follow.objects.bulk_create(rows)

    outcome = Outcome()
    with moto_process() as (endpoint, _):

        def fresh_stream() -> Any:
            options = {
                **settings.DJANGO_MIRROR["STREAM"]["OPTIONS"],
                "stream_name": f"relay-bench-{uuid.uuid4().hex[:8]}",
                "endpoint_url": endpoint,
                "shard_count": SHARDS,
            }
            mirror = {**settings.DJANGO_MIRROR, "STREAM": {**settings.DJANGO_MIRROR["STREAM"]}}
            mirror["STREAM"]["OPTIONS"] = options
            return override_settings(DJANGO_MIRROR=mirror)

        with fresh_stream():
            stream = get_stream()
            stream.create()
            fill(1)
            relay.drain()
            per_event = kinesis_records(stream.client, stream.name) / BULK
        outcome.rows.append(
            Row(
                "relay: Kinesis records per event on bulk_create(1,000)",
                db,
                f"{per_event:.3f}",
                f"<= {RECORDS_PER_EVENT_TARGET}",
                per_event <= RECORDS_PER_EVENT_TARGET,
                per_event,
            )
        )

        rates: list[float] = []
        cpu_rates: list[float] = []
        for round_ in range(rounds):
            OutboxBatch.objects.all().delete()
            fill(batches)
            with fresh_stream():
                stream = get_stream()
                stream.create()
                stream.shard_map()  # listed once, as a running relay has it
                log(f"relay: round {round_ + 1}, draining {batches * BULK:,} events")
                started, cpu = time.perf_counter(), time.process_time()
                result = relay.drain()
                wall, cpu = time.perf_counter() - started, time.process_time() - cpu
            assert result.events == batches * BULK and not result.failed_batches, result
            rates.append(result.events / wall)
            cpu_rates.append(result.events / cpu)
    rate = statistics.median(rates)
    outcome.rows.append(
        Row(
            "relay: events/s per process (moto server), aggregated",
            db,
            f"{rate:,.0f}",
            f">= {EVENTS_PER_SECOND_TARGET:,}",
            rate >= EVENTS_PER_SECOND_TARGET,
            rate,
        )
    )
    outcome.notes.append(
        f"relay [{db}]: {batches * BULK:,} events a round to {SHARDS} shards, {rounds} rounds: "
        f"{min(rates):,.0f}-{max(rates):,.0f} events/s wall, {min(cpu_rates):,.0f}-"
        f"{max(cpu_rates):,.0f} events per CPU second of the "
        f"relay; {per_event * BULK:.0f} Kinesis records for a bulk_create(1,000)."
    )
    return outcome
