"""Shared plumbing: database set-up in a benchmark process, interleaved timing, results.

Absolute times on a shared machine wander by tens of percent from one minute to the
next, so every comparison runs its variants alternately (A, B, B, A, ...) within one
process and reports the median of the per-round ratios.
"""

from __future__ import annotations

import gc
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

PG_DATABASES = ("bench_source", "bench_target")


@dataclass
class Row:
    """One line of the results table."""

    benchmark: str
    db: str
    measured: str
    target: str
    passed: bool
    value: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Outcome:
    """What one benchmark process reports: table rows and notes printed under the table."""

    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the result line for the parent."""
    print(
        f"  [{os.environ.get('BENCH_DATABASE', 'sqlite')}] {message}", file=sys.stderr, flush=True
    )


def pg_conninfo(dbname: str) -> str:
    url = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432")
    return f"{url}/{dbname}"


def ensure_pg_databases() -> None:
    """Create ``bench_source`` and ``bench_target`` when missing (needs psycopg)."""
    import psycopg

    with psycopg.connect(pg_conninfo("postgres"), autocommit=True) as conn:
        present = {
            name
            for (name,) in conn.execute(
                "SELECT datname FROM pg_database WHERE datname = ANY(%s)", [list(PG_DATABASES)]
            )
        }
        for name in PG_DATABASES:
            if name not in present:
                conn.execute(f'CREATE DATABASE "{name}"')


def reset_pg_schemas() -> None:
    """Empty both bench databases, so every run starts from the current models' tables."""
    import psycopg

    for name in PG_DATABASES:
        with psycopg.connect(pg_conninfo(name), autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
            conn.execute("CREATE SCHEMA public")


def setup_django() -> None:
    """Configure Django for this process and create every table on both aliases."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    if os.environ.get("BENCH_DATABASE") == "postgres":
        ensure_pg_databases()
        reset_pg_schemas()
    else:
        from benchmarks import settings

        settings.BENCH_DIR.mkdir(parents=True, exist_ok=True)
    import django
    from django.core.management import call_command

    django.setup()
    for alias in ("default", "new"):
        call_command("migrate", database=alias, run_syncdb=True, verbosity=0)


def interleaved(
    variants: list[tuple[Callable[[], Any], Callable[[Any], Any]]],
    rounds: int,
    warmup: int = 1,
    budget: float | None = None,
    min_rounds: int = 3,
) -> list[list[float]]:
    """Seconds of each variant in each round, its variants run alternately.

    Each variant is ``(prepare, timed)``: ``prepare()`` runs untimed and its result is
    passed to ``timed``. Even rounds run the variants in order, odd rounds reversed,
    so neither gains from always going first. ``warmup`` rounds are run, not kept.
    Once ``budget`` seconds have passed, no new round starts after ``min_rounds``: a
    busy database makes fewer rounds rather than a benchmark that runs for minutes.
    """
    times: list[list[float]] = [[] for _ in variants]
    started = time.monotonic()
    for r in range(warmup + rounds):
        kept = r - warmup
        if budget is not None and kept >= min_rounds and time.monotonic() - started > budget:
            break
        order = list(range(len(variants)))
        if r % 2:
            order.reverse()
        for i in order:
            prepare, timed = variants[i]
            state = prepare()
            gc.collect()
            t0 = time.perf_counter()
            timed(state)
            elapsed = time.perf_counter() - t0
            if r >= warmup:
                times[i].append(elapsed)
    return times


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median of the per-round ratios: each ratio compares runs a moment apart."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def spread(ratios: list[float]) -> str:
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def overhead_note(what: str, times: list[list[float]], per: int) -> str:
    """``what: 12 us vs 10 us (N rounds, ratios a-b)``: the medians behind an overhead
    ratio, per write, and how widely its rounds spread."""
    ours, plain = (statistics.median(t) / per * 1e6 for t in times)
    ratios = [a / b for a, b in zip(*times, strict=True)]
    return (
        f"{what}: {ours:,.0f} us vs {plain:,.0f} us ({len(ratios)} rounds, ratios {spread(ratios)})"
    )


def stop_process(process: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL if it has not ended within 30 s: a benchmark's helper
    process never outlives it."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def shard_pages(client: Any, stream_name: str, limit: int = 10_000) -> Iterator[tuple[str, list]]:
    """(shard id, records) of each ``GetRecords`` page of every shard, read with boto3
    alone, one shard after the other, to the end of its data."""
    for shard in client.list_shards(StreamName=stream_name)["Shards"]:
        iterator = client.get_shard_iterator(
            StreamName=stream_name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            response = client.get_records(ShardIterator=iterator, Limit=limit)
            yield shard["ShardId"], response["Records"]
            if not response["Records"] and not response.get("MillisBehindLatest"):
                break
            iterator = response.get("NextShardIterator")


def kinesis_records(client: Any, stream_name: str, limit: int = 10_000) -> int:
    """Kinesis records (an aggregate counts one) of every shard: the raw read replay is
    compared with, and a count."""
    return sum(len(records) for _, records in shard_pages(client, stream_name, limit))
