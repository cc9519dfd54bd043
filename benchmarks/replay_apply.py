"""Replay apply speed: ``DatabaseTarget.apply`` against the database driver's own limit.

Both sides get the same ``Follow`` rows, 1,000 per batch, one transaction per batch,
the two alternating batch by batch. Ours gets them as decoded ``Event`` objects
(what replay holds after reading a shard) and does everything replay does: keep the
newest event per row, read and lock the stored versions, skip stale events, write
rows and versions. The limit gets ready-made parameter tuples and runs one
``executemany`` upsert (``INSERT ... ON CONFLICT (id) DO UPDATE``) per batch on the
same connection, into ``PlainFollow``, a table of the same shape. Every batch holds
500 rows the previous batch wrote (updates) and 500 new ones (inserts), as in a
stream of follows.
"""

from __future__ import annotations

import datetime as dt
import statistics
from typing import Any

from benchmarks.common import Outcome, Row, interleaved, log, spread

RATIO_TARGET = 0.5
RATE_TARGET = 10_000
BATCH = 1_000


def follow_values(pk: int, generation: int) -> dict[str, Any]:
    """The row of follow ``pk`` as capture reads it; ``generation`` changes a few columns."""
    return {
        "id": pk,
        "user_id": pk,
        "channel_id": pk % 1_000,
        "notifications": (pk + generation) % 3 != 0,
        "created_at": dt.datetime(2024, 5, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=pk),
        "origin": ("web", "ios", "android")[(pk + generation) % 3],
    }


def row_image(model: type[Any], values: dict[str, Any]) -> dict[str, Any]:
    """A row image as ``docs/events.md`` defines it: every column, tagged where needed."""
    from django_mirror.core.events import encode_column

    return {f.column: encode_column(f, values[f.attname]) for f in model._meta.concrete_fields}


def batch_pks(index: int) -> range:
    """Batch ``index`` rewrites the newer half of batch ``index - 1`` and adds 500 rows."""
    start = index * BATCH // 2 + 1
    return range(start, start + BATCH)


def build_events(model: type[Any], index: int) -> list[Any]:
    """One batch as relay ships it: captured row images, 100 per outbox row, versioned."""
    from django_mirror.core.events import UPSERT, VERSION_STRIDE, Event, encode_value

    events = []
    for i, pk in enumerate(batch_pks(index)):
        outbox_id = index * 100 + i // 100 + 1
        data = {
            "schema": 1,
            "id": f"{index}-{pk}",
            "model": model._meta.label,
            "op": UPSERT,
            "pk": encode_value(pk),
            "version": outbox_id * VERSION_STRIDE + i % 100,
            "source": "default",
            "tx": f"tx{outbox_id}",
            "ts": "2024-05-01T12:00:00+00:00",
            "row": row_image(model, follow_values(pk, index)),
        }
        events.append(Event.from_dict(data))
    return events


def build_params(model: type[Any], index: int, connection: Any) -> list[tuple]:
    """The same rows as the driver's parameters, converted the way Django converts them."""
    fields = model._meta.concrete_fields
    rows = []
    for pk in batch_pks(index):
        values = follow_values(pk, index)
        rows.append(tuple(f.get_db_prep_save(values[f.attname], connection) for f in fields))
    return rows


def upsert_sql(model: type[Any], vendor: str, quote: Any) -> str:
    fields = model._meta.concrete_fields
    mark = "?" if vendor == "sqlite" else "%s"
    columns = ", ".join(quote(f.column) for f in fields)
    updates = ", ".join(f"{quote(f.column)} = excluded.{quote(f.column)}" for f in fields[1:])
    return (
        f"INSERT INTO {quote(model._meta.db_table)} ({columns}) "
        f"VALUES ({', '.join([mark] * len(fields))}) "
        f"ON CONFLICT ({quote(model._meta.pk.column)}) DO UPDATE SET {updates}"
    )


def run(db: str, quick: bool) -> Outcome:
    from django.db import connections

    from benchmarks.benchapp.models import Follow, PlainFollow
    from django_mirror.capture.record import paused
    from django_mirror.targets import DatabaseTarget

    min_batches = 5 if quick else 20  # at least 20,000 events each
    max_batches = 10 if quick else 300
    warmup = 2 if quick else 5
    target = DatabaseTarget("new")
    conn = connections["new"]
    conn.ensure_connection()
    raw = conn.connection  # the driver's own connection: same session, same pragmas
    sql = upsert_sql(PlainFollow, conn.vendor, conn.ops.quote_name)
    made = {"ours": 0, "raw": 0}
    applied = [0]

    def prepare_ours() -> list[Any]:
        made["ours"] += 1
        return build_events(Follow, made["ours"] - 1)

    def prepare_raw() -> list[tuple]:
        made["raw"] += 1
        return build_params(PlainFollow, made["raw"] - 1, conn)

    def timed_ours(events: list[Any]) -> None:
        with paused():  # as Replayer.apply_records does
            result = target.apply(events)
        assert not result.failed, result.failed[:3]
        applied[0] += result.applied

    if conn.vendor == "sqlite":

        def timed_raw(rows: list[tuple]) -> None:
            raw.execute("BEGIN")
            raw.executemany(sql, rows)
            raw.execute("COMMIT")

    else:

        def timed_raw(rows: list[tuple]) -> None:
            with raw.transaction(), raw.cursor() as cursor:
                cursor.executemany(sql, rows)

    log(f"replay apply: batches of {BATCH:,} events, {min_batches}-{max_batches} per side")
    ours, limit = interleaved(
        [(prepare_ours, timed_ours), (prepare_raw, timed_raw)],
        max_batches,
        warmup=warmup,
        budget=25,
        min_rounds=min_batches,
    )
    assert applied[0] == BATCH * made["ours"], f"applied {applied[0]} of {BATCH * made['ours']}"
    # Both sides did the same work: the two tables now hold the very same rows.
    columns = [f.attname for f in Follow._meta.concrete_fields]
    mirrored = list(Follow.objects.using("new").order_by("id").values_list(*columns))
    plain = list(PlainFollow.objects.using("new").order_by("id").values_list(*columns))
    assert len(mirrored) == batch_pks(made["ours"] - 1).stop - 1 and mirrored == plain

    speed_ratios = [b / a for a, b in zip(ours, limit, strict=True)]
    ratio = statistics.median(speed_ratios)
    rate = BATCH / statistics.median(ours)
    limit_rate = BATCH / statistics.median(limit)
    outcome = Outcome()
    outcome.rows.append(
        Row(
            "replay: apply / raw driver upsert (speed)",
            db,
            f"{ratio:.2f}x",
            f">= {RATIO_TARGET}x",
            ratio >= RATIO_TARGET,
            ratio,
        )
    )
    outcome.rows.append(
        Row(
            "replay: apply, events/s (absolute)",
            db,
            f"{rate:,.0f}/s",
            f">= {RATE_TARGET:,}/s",
            rate >= RATE_TARGET,
            rate,
        )
    )
    outcome.notes.append(
        f"replay apply [{db}]: ours {rate:,.0f} events/s, raw executemany upsert "
        f"{limit_rate:,.0f} rows/s; {len(ours)} batches of {BATCH:,} events per side "
        f"({len(ours) * BATCH:,} events), each half updates, half inserts "
        f"(batch speed ratios {spread(speed_ratios)})."
    )
    return outcome
