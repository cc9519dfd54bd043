"""DynamoDB replay speed: ``DynamoDBTarget.apply`` against raw ``batch_write_item``.

Both sides talk HTTP to moto's ``ThreadedMotoServer`` on 127.0.0.1, each into a table
created afresh for the round, the two sides alternating round by round. The server
runs in a process of its own, as DynamoDB runs on machines of its own: in this
process its request handling would take the client's interpreter lock and be billed
to the client. A round is ``BATCHES`` batches of 1,000 ``Follow`` upserts (what
replay hands a target), each batch rewriting the newer half of the previous one, so
half the events of a batch update an item and half insert one.

Ours gets the batches as ``Event`` objects and does all that replay asks of it: keep
the newest event per row, read the versions held (``BatchGetItem``, 100 keys a call),
skip stale events, build the items and write them (``BatchWriteItem``, 25 a call),
with its default ``threads``. The limit gets the very items ours writes, built
beforehand with the target's own ``items.event_item``, and sends them 25 a call with
``batch_write_item`` from one thread, on a client configured the same, into a table
set up the same (``setup``: on-demand, TTL on). After the rounds, both tables must
hold the very same rows.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.common import Outcome, Row, interleaved, log, spread
from benchmarks.moto_server import moto_process
from benchmarks.replay_apply import follow_values, row_image

RATIO_TARGET = 0.9
BATCH = 1_000
WRITE_CHUNK = 25


def follow_row(model: type[Any], pk: int, generation: int) -> dict[str, Any]:
    """Follow ``pk``'s row image as capture ships it: the same rows the replay benchmark
    applies to a database."""
    return row_image(model, follow_values(pk, generation))


def build_round(model: type[Any], batches: int) -> list[list[Any]]:
    """``batches`` batches of upserts; batch ``i`` rewrites half of batch ``i - 1``."""
    from django_mirror.core.events import UPSERT, VERSION_STRIDE, Event

    label = model._meta.label
    rounds = []
    for index in range(batches):
        start = index * BATCH // 2 + 1
        rounds.append(
            [
                Event(
                    model=label,
                    op=UPSERT,
                    pk=pk,
                    version=(index * 10 + i // 100 + 1) * VERSION_STRIDE + i % 100,
                    row=follow_row(model, pk, index),
                    tx=f"tx{index}-{i // 100}",
                    ts="2024-05-01T12:00:00+00:00",
                )
                for i, pk in enumerate(range(start, start + BATCH))
            ]
        )
    return rounds


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used so far, from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fresh_table(target: Any, model: type[Any]) -> str:
    """Drop the model's table if a previous round left it, and create it empty."""
    name = target.table(model)
    client = target.client
    try:
        client.delete_table(TableName=name)
        client.get_waiter("table_not_exists").wait(TableName=name)
    except client.exceptions.ResourceNotFoundException:
        pass
    target.setup([model])
    return name


def run(db: str, quick: bool) -> Outcome:
    from benchmarks.benchapp.models import Follow
    from django_mirror.capture.record import paused
    from django_mirror.targets import DynamoDBTarget
    from django_mirror.targets.dynamodb.items import event_item

    batches = 5 if quick else 20
    rounds = 3 if quick else 5
    events_per_round = batches * BATCH
    applied = [0]
    written = [0]
    #: CPU seconds of each kept and warm-up round: this process's, and moto's.
    cpu: dict[str, list[tuple[float, float]]] = {"ours": [], "raw": []}

    with moto_process() as (endpoint, server_pid):

        @contextmanager
        def metered(side: str) -> Iterator[None]:
            client, server = time.process_time(), cpu_seconds(server_pid)
            yield
            used = (time.process_time() - client, cpu_seconds(server_pid) - server)
            cpu[side].append(used)

        ours = DynamoDBTarget(table_name="ours_{model_name}", endpoint_url=endpoint)
        raw = DynamoDBTarget(table_name="raw_{model_name}", endpoint_url=endpoint)

        def prepare_ours() -> list[list[Any]]:
            fresh_table(ours, Follow)
            return build_round(Follow, batches)

        def prepare_raw() -> tuple[str, list[dict[str, Any]]]:
            table = fresh_table(raw, Follow)
            items = [
                event_item(Follow, e, raw.key, raw.tombstone_ttl)
                for batch in build_round(Follow, batches)
                for e in batch
            ]
            return table, items

        def timed_ours(round_: list[list[Any]]) -> None:
            with metered("ours"):
                for events in round_:
                    with paused():  # as Replayer.apply_records does
                        result = ours.apply(events)
                    assert not result.failed, result.failed[:3]
                    assert result.applied == len(events), (result.applied, result.stale)
                    applied[0] += result.applied

        def timed_raw(state: tuple[str, list[dict[str, Any]]]) -> None:
            table, items = state
            client = raw.client
            with metered("raw"):
                for start in range(0, len(items), WRITE_CHUNK):
                    chunk = items[start : start + WRITE_CHUNK]
                    response = client.batch_write_item(
                        RequestItems={table: [{"PutRequest": {"Item": i}} for i in chunk]}
                    )
                    assert not response.get("UnprocessedItems"), "moto left items unprocessed"
                    written[0] += len(chunk)

        log(
            f"dynamodb replay: {rounds} rounds of {batches} batches of {BATCH:,} events "
            f"per side, moto at {endpoint}"
        )
        times_ours, times_raw = interleaved(
            [(prepare_ours, timed_ours), (prepare_raw, timed_raw)],
            rounds,
            warmup=1,
            budget=90,
            min_rounds=3,
        )
        # Both sides wrote the same items: the two tables hold the very same rows.
        rows = batches * BATCH // 2 + BATCH // 2
        mirrored = sorted(ours.scan(Follow), key=lambda r: r["id"])
        assert len(mirrored) == rows and mirrored == sorted(raw.scan(Follow), key=lambda r: r["id"])
    assert applied[0] == written[0] == events_per_round * len(cpu["ours"])

    speed_ratios = [b / a for a, b in zip(times_ours, times_raw, strict=True)]
    ratio = statistics.median(speed_ratios)
    rate = events_per_round / statistics.median(times_ours)
    raw_rate = events_per_round / statistics.median(times_raw)
    # CPU per event of the client (this process, all threads) and of moto, warm-up left out.
    per_event = {
        side: [
            statistics.median(used[k] for used in cpu[side][1:]) / events_per_round * 1e6
            for k in (0, 1)
        ]
        for side in cpu
    }
    outcome = Outcome()
    outcome.rows += [
        Row(
            "dynamodb: replay apply / raw batch_write_item (speed)",
            db,
            f"{ratio:.2f}x",
            f">= {RATIO_TARGET}x",
            ratio >= RATIO_TARGET,
            ratio,
        ),
        Row(
            "dynamodb: replay apply, events/s (moto)",
            db,
            f"{rate:,.0f}/s",
            "none; reported",
            True,
            rate,
        ),
        Row(
            "dynamodb: raw batch_write_item, items/s (moto)",
            db,
            f"{raw_rate:,.0f}/s",
            "none; reported",
            True,
            raw_rate,
        ),
    ]
    outcome.notes.append(
        f"dynamodb replay [{db}]: DynamoDBTarget.apply {rate:,.0f} events/s, raw "
        f"batch_write_item {raw_rate:,.0f} items/s, against moto's ThreadedMotoServer in a "
        f"process of its own; {len(times_ours)} rounds of {events_per_round:,} events per "
        f"side ({batches} batches of {BATCH:,}, half updates), fresh tables per round "
        f"(round speed ratios {spread(speed_ratios)}). CPU per event, client / moto: apply "
        f"{per_event['ours'][0]:.0f} / {per_event['ours'][1]:.0f} us, raw "
        f"{per_event['raw'][0]:.0f} / {per_event['raw'][1]:.0f} us."
    )
    return outcome
