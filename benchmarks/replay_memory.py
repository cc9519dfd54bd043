"""Replay memory: 1,000,000 events through ``Replayer.apply_records`` in bounded memory.

The records are made lazily, 1,000 at a time, as JSON bytes (what a shard read hands
over), and fed to the replayer batch by batch into the SQLite target. 100,000
distinct follows are written ten times each, so later versions overwrite earlier
ones and the files stay small. Peak RSS of this whole process (it runs alone in a
subprocess) is read from ``getrusage`` at the end.
"""

from __future__ import annotations

import datetime as dt
import json
import resource
import sys
import time
from collections.abc import Iterator
from typing import Any

from benchmarks.common import Outcome, Row, log
from benchmarks.replay_apply import follow_values, row_image

PEAK_TARGET_MB = 300
BATCH = 1_000


def event_dict(i: int, distinct: int) -> dict[str, Any]:
    """Event ``i`` as relay ships it; row ``i % distinct + 1``, newer with every lap."""
    from benchmarks.benchapp.models import Follow
    from django_mirror.core.events import UPSERT, encode_value

    pk = i % distinct + 1
    return {
        "schema": 1,
        "id": f"e{i}",
        "model": Follow._meta.label,
        "op": UPSERT,
        "pk": encode_value(pk),
        "version": i + 1,
        "source": "default",
        "tx": f"tx{i // 100}",
        "ts": "2024-05-01T12:00:00+00:00",
        "row": row_image(Follow, follow_values(pk, i // distinct)),
    }


def records(total: int, distinct: int) -> Iterator[list[tuple[str, bytes]]]:
    """Batches of ``(sequence number, event JSON)``, made only when asked for.

    The JSON comes from a template so that making a million records takes seconds, not a
    minute of the run; the first batch is checked against ``event_dict`` field by field.
    """
    template = (
        '{{"schema":1,"id":"e{i}","model":"benchapp.Follow","op":"upsert","pk":{pk},'
        '"version":{version},"source":"default","tx":"tx{tx}",'
        '"ts":"2024-05-01T12:00:00+00:00","row":{{"id":{pk},"user_id":{pk},'
        '"channel_id":{channel},"notifications":{notify},"created_at":{{"$dt":"{created}"}},'
        '"origin":"{origin}"}}}}'
    )
    base = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    for start in range(0, total, BATCH):
        batch = []
        for i in range(start, min(start + BATCH, total)):
            pk = i % distinct + 1
            lap = i // distinct
            text = template.format(
                i=i,
                pk=pk,
                version=i + 1,
                tx=i // 100,
                channel=pk % 1_000,
                notify="true" if (pk + lap) % 3 != 0 else "false",
                created=(base + dt.timedelta(seconds=pk)).isoformat(),
                origin=("web", "ios", "android")[(pk + lap) % 3],
            )
            batch.append((f"{i:020d}", text.encode()))
        if start == 0:
            for i, (_, data) in enumerate(batch):
                assert json.loads(data) == event_dict(i, distinct), data
        yield batch


def peak_rss_mb() -> float:
    """Peak resident set size of this process; ``ru_maxrss`` is KiB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run(db: str, quick: bool) -> Outcome:
    from benchmarks.benchapp.models import Follow
    from django_mirror.pipeline.replay import Replayer

    total = 100_000 if quick else 1_000_000
    distinct = 10_000 if quick else 100_000
    replayer = Replayer(batch_size=BATCH)
    baseline = peak_rss_mb()
    log(f"replay memory: {total:,} events over {distinct:,} rows, baseline RSS {baseline:.0f} MB")
    applying = 0.0
    started = time.perf_counter()
    for n, batch in enumerate(records(total, distinct), 1):
        t0 = time.perf_counter()
        replayer.apply_records(batch, "shardId-000000000000")
        applying += time.perf_counter() - t0
        if n % 200 == 0:
            log(f"replay memory: {n * BATCH:,} events, peak RSS {peak_rss_mb():.0f} MB")
    wall = time.perf_counter() - started
    peak = peak_rss_mb()
    stats = replayer.stats
    assert stats.read == total and stats.dead_letters == 0, stats.line()
    assert stats.applied == total, stats.line()
    assert Follow.objects.using("new").count() == distinct

    outcome = Outcome()
    outcome.rows.append(
        Row(
            f"replay: peak RSS, {total:,} events",
            db,
            f"{peak:.0f} MB",
            f"<= {PEAK_TARGET_MB} MB",
            peak <= PEAK_TARGET_MB,
            peak,
        )
    )
    outcome.notes.append(
        f"replay memory [{db}]: {total:,} events in {wall:.1f} s "
        f"({total / applying:,.0f} events/s in apply_records, {total / wall:,.0f} events/s "
        f"including making the JSON); peak RSS {peak:.0f} MB, {baseline:.0f} MB before the "
        "first event."
    )
    return outcome
