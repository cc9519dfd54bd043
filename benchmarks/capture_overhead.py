"""Capture overhead: what mirroring adds to the user's own writes.

``save()`` of one new row in its own committed transaction, and ``bulk_create`` of
1,000 rows in one transaction, on the mirrored ``Follow`` against ``PlainFollow``,
the same table shape unmirrored, twice: with shipping off (``RELAY["ON_COMMIT"] =
"off"``, shipping left to ``mirror_relay`` in another process: only the work done inside
the user's transaction is measured), then in the default mode, the relay thread of the
same process shipping each commit to Kinesis (moto's server in a process of its own), so
what that thread costs the writer (the interpreter lock, SQLite's write lock) is counted.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks.common import Outcome, Row, interleaved, log, median_ratio, overhead_note

SAVE_TARGET = 1.5
BULK_TARGET = 1.2
#: With the relay thread shipping every commit beside the writer (the default mode).
SAVE_SHIPPING_TARGET = 1.3
BULK_SHIPPING_TARGET = 1.2


def run(db: str, quick: bool) -> Outcome:
    from django.conf import settings
    from django.db import transaction
    from django.db.models import Sum
    from django.test import override_settings

    from benchmarks.benchapp.models import Follow, PlainFollow
    from benchmarks.moto_server import moto_process
    from django_mirror.config import conf
    from django_mirror.models import OutboxBatch
    from django_mirror.pipeline import relay
    from django_mirror.streams import get_stream

    assert conf.get_settings().relay.on_commit == "off"
    assert conf.model_config(Follow) is not None and conf.model_config(PlainFollow) is None

    # Many short alternating samples: a median over dozens of rounds shrugs off the
    # scheduling hiccups of a shared machine that a few long samples would absorb.
    rounds = 8 if quick else 80
    budget = 4 if quick else 15
    saves = 20 if quick else 40
    bulk_rows = 1_000
    numbers = itertools.count(1)
    now = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    captured = [0]

    def build(model: type[Any], count: int) -> list[Any]:
        return [
            model(user_id=n, channel_id=n % 1_000, created_at=now, origin="web")
            for n in itertools.islice(numbers, count)
        ]

    def take_outbox() -> None:
        """Count the captured events and empty the outbox, as the relay would meanwhile."""
        captured[0] += OutboxBatch.objects.aggregate(n=Sum("count"))["n"] or 0
        OutboxBatch.objects.all().delete()

    def prepare(model: type[Any], size: int, shipping: bool) -> Callable[[], list[Any]]:
        def build_objects() -> list[Any]:
            if model is Follow and not shipping:
                take_outbox()
            return build(model, size)

        return build_objects

    def timed_saves(objs: list[Any]) -> None:
        for obj in objs:
            with transaction.atomic():
                obj.save()

    def timed_bulk(objs: list[Any]) -> None:
        with transaction.atomic():
            type(objs[0]).objects.bulk_create(objs)

    def measure(shipping: bool) -> list[list[list[float]]]:
        """Seconds per round of each write, mirrored and unmirrored: [save, bulk]."""
        mode = "relay thread shipping" if shipping else "relay off"
        times = []
        for write, size, timed in (("save()", saves, timed_saves), ("bulk", bulk_rows, timed_bulk)):
            log(f"capture ({mode}): {write}, up to {rounds} rounds of {size} rows per model")
            variants = [(prepare(model, size, shipping), timed) for model in (Follow, PlainFollow)]
            times.append(interleaved(variants, rounds, budget=budget))
        return times

    save_off, bulk_off = measure(shipping=False)
    take_outbox()
    written = Follow.objects.count()
    assert captured[0] == written, f"{captured[0]} events captured for {written} rows written"

    with moto_process() as (endpoint, _):
        options = {**settings.DJANGO_MIRROR["STREAM"]["OPTIONS"], "endpoint_url": endpoint}
        mirror = {key: value for key, value in settings.DJANGO_MIRROR.items() if key != "RELAY"}
        mirror["STREAM"] = {**mirror["STREAM"], "OPTIONS": options}
        with override_settings(DJANGO_MIRROR=mirror):  # the default relay: its thread
            assert conf.get_settings().relay.on_commit == "thread"
            get_stream().create()
            save_on, bulk_on = measure(shipping=True)
            relay.drain()
            # At least once: a PutRecords retried after a timeout on a loaded machine puts
            # its records again, which replay's versions absorb; so count distinct events.
            ids = [json.loads(data)["id"] for data in stream_records(get_stream())]
            shipped, duplicates = len(set(ids)), len(ids) - len(set(ids))
    written = Follow.objects.count()
    assert captured[0] + shipped == written, (
        f"{captured[0]} + {shipped} events, {written} rows, {OutboxBatch.objects.count()} batches left"
    )

    outcome = Outcome()
    figures = [
        ("save()", "relay off", save_off, SAVE_TARGET),
        ("bulk_create(1,000)", "relay off", bulk_off, BULK_TARGET),
        ("save()", "relay thread", save_on, SAVE_SHIPPING_TARGET),
        ("bulk_create(1,000)", "relay thread", bulk_on, BULK_SHIPPING_TARGET),
    ]
    notes = []
    for write, mode, times, target in figures:
        ratio = median_ratio(*times)
        outcome.rows.append(
            Row(
                f"capture: {write} mirrored / unmirrored, {mode}",
                db,
                f"{ratio:.2f}x",
                f"<= {target}x",
                ratio <= target,
                ratio,
            )
        )
        per_write = saves if write == "save()" else 1
        notes.append(overhead_note(f"{write} {mode}", times, per_write))
    outcome.notes.append(
        f"capture [{db}]: " + "; ".join(notes) + f"; every write captured ({captured[0]:,} "
        f"events with the relay off, {shipped:,} shipped by the relay thread to moto"
        + (f"; {duplicates:,} records put again after a retried PutRecords" if duplicates else "")
        + ")."
    )
    return outcome


def stream_records(stream: Any) -> Iterator[bytes]:
    """Every record the stream holds, shard by shard, from the oldest."""
    for shard in stream.shards():
        position = stream.position(shard.shard_id, None)
        while position is not None:
            batch = stream.read(shard.shard_id, position, 10_000)
            yield from (data for _, data in batch.records)
            if not batch.records:
                break
            position = batch.next_position
