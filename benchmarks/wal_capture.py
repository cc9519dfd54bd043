"""WAL capture (issue 18): what ``CAPTURE = "wal"`` costs the app's writes, how fast
``mirror_capture`` drains the log, against ``pg_recvlogical`` reading the same log raw,
and its commit-to-outbox latency under a steady write load.

Everything runs on a throwaway PostgreSQL 15 cluster with ``wal_level = logical`` that
this process starts (``tests/wal_cluster.py``'s ``Cluster``, run with ``fsync = off``
and ``synchronous_commit = off``), with its two databases as the aliases ``walsrc``
(the source, read from its log) and ``waltgt``; ``bench_source`` and ``bench_target``
are not used.

- **overhead**: ``save()`` of one new row in its own committed transaction, and
  ``bulk_create`` of 1,000 rows in one transaction, on ``Follow`` (mirrored, phase
  capture, ``CAPTURE = "wal"``) against ``PlainFollow`` (the same table unmirrored: what
  the model cost in phase off), alternating, with ``mirror_capture`` running in a
  process of its own (``RELAY["ON_COMMIT"] = "off"``: shipping is not the subject).
  Before each timed section this process waits, untimed, until the capture process has
  stored everything written so far, so one section's capture work never lands in the
  other model's section. Then again with no capture process (the slot kept, nobody
  reading it): reported.
- **backlog**: 100 transactions of 1,000 rows, then 2,000 single-row transactions, are
  written to a fresh slot and to a second slot on the same publication;
  ``Capturer.round()`` in this process drains the first as ``mirror_capture --once``
  does, ``pg_recvlogical`` reads the second raw up to the same log position,
  alternating.
- **latency**: a thread commits single-row inserts at a steady 2,000 a second, then 200,
  while the capture process runs; each event's latency is from its source commit (the
  log's commit time, which the event carries) to the outbox ``INSERT`` of the capture
  process (a column this benchmark adds to the outbox table, defaulting to
  ``clock_timestamp()``): both read on the database server's clock.

This module run as a script (``python -m benchmarks.wal_capture PORT ARGS``) is
``mirror_capture ARGS`` with the benchmark settings pointed at the cluster.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Outcome,
    Row,
    interleaved,
    log,
    median_ratio,
    overhead_note,
    stop_process,
)

OVERHEAD_TARGET = 1.05
#: ``mirror_capture`` must drain at least the rate the latency run writes at, or the
#: slot's lag grows without bound under that load.
DRAIN_TARGET = 2_000
RATE = 2_000
#: A pace ``mirror_capture`` keeps with single-row commits on this machine.
LOW_RATE = 200
BULK = 1_000
ROOT = Path(__file__).resolve().parent.parent
LABEL = "benchapp.Follow"
#: The second slot ``pg_recvlogical`` reads, on the same publication.
RAW_SLOT = "bench_raw"
#: The column this benchmark adds to the outbox table: when each batch was inserted.
STORED_AT = "bench_stored_at"


def mirror_settings(base: dict[str, Any]) -> dict[str, Any]:
    """``DJANGO_MIRROR`` with ``Follow`` captured from the cluster's log, relay off."""
    from tests import wal_cluster

    kept = {k: v for k, v in base.items() if k not in ("SOURCE", "MODELS", "RELAY")}
    return wal_cluster.mirror_settings(kept, labels=(LABEL,))


def attach(port: int) -> list[str]:
    """The cluster's two databases as aliases of this (already set up) process."""
    from django.conf import settings
    from django.db import connections

    from tests import wal_cluster

    added = wal_cluster.databases(port)
    settings.DATABASES.update(added)
    configured = connections.configure_settings(dict(settings.DATABASES))
    for alias in added:
        connections.settings[alias] = configured[alias]
    return list(added)


def skipped(db: str, reason: str) -> Outcome:
    """No cluster can be started here: rows that say why, not failures (as a missing
    PostgreSQL server skips the PostgreSQL benchmarks)."""
    return Outcome(
        [
            Row(f"wal-capture: {what}", db, "skipped", "-", True)
            for what in ("capture overhead", "mirror_capture throughput and latency")
        ],
        [f"wal-capture [{db}]: skipped, no PostgreSQL cluster can be started here: {reason}."],
    )


# --- the cluster's source -----------------------------------------------------------------


def execute(sql: str, params: Any = None) -> list[tuple]:
    from django.db import connections

    from tests.wal_cluster import SOURCE

    with connections[SOURCE].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def lsn(function: str) -> int:
    from django_mirror.capture.wal import slot

    return slot.lsn_int(execute(f"SELECT {function}()::text")[0][0])


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``condition()`` held (polled every 5 ms); an error past ``timeout``."""
    started = time.perf_counter()
    while not condition():
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"{what}: not after {timeout:.0f} s")
        time.sleep(0.005)
    return time.perf_counter() - started


def flushed_to(target: int, timeout: float = 10.0) -> None:
    """The cluster commits asynchronously: a slot is read up to the flushed log only."""
    wait_for(lambda: lsn("pg_current_wal_flush_lsn") >= target, timeout, "log flush")


def confirmed(slot_name: str) -> int:
    from django_mirror.capture.wal import slot

    rows = execute(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
        [slot_name],
    )
    return slot.lsn_int(rows[0][0])


def fresh_slots() -> None:
    """No row, no outbox batch, a new slot (and ``pg_recvlogical``'s), both starting
    here: the ``TRUNCATE`` lies before them, so capture never reads it."""
    from benchmarks.benchapp.models import Follow, PlainFollow
    from django_mirror.capture.wal import slot
    from django_mirror.models import OutboxBatch
    from tests.wal_cluster import SOURCE

    slot.drop_slot(SOURCE)
    execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
        [RAW_SLOT],
    )
    tables = (Follow, PlainFollow, OutboxBatch)
    execute(f"TRUNCATE {', '.join(m._meta.db_table for m in tables)} RESTART IDENTITY")
    slot.setup(SOURCE)  # what mirror_setup does with CAPTURE "wal", less the stream
    execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [RAW_SLOT])


# --- mirror_capture in a process of its own -----------------------------------------------


class CaptureProcess:
    """``mirror_capture`` (default options) in its own process, stopped with SIGTERM."""

    def __init__(self, port: int) -> None:
        from django_mirror.capture.wal import slot

        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "benchmarks.settings"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.wal_capture", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,  # its closing count; errors go to stderr
        )
        key = zlib.crc32(f"django_mirror slot {slot.SLOT}".encode())  # Capturer.acquire's
        try:
            wait_for(self.reading(key), 60, "mirror_capture did not start")
        except BaseException:
            self.stop()
            raise

    def reading(self, key: int) -> Callable[[], bool]:
        def holds_the_slot() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"mirror_capture exited ({self.process.returncode})")
            return bool(
                execute(
                    "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND objid = %s::bigint::oid",
                    [key],
                )
            )

        return holds_the_slot

    def stop(self) -> None:
        stop_process(self.process)


@contextmanager
def capture_process(port: int) -> Iterator[CaptureProcess]:
    process = CaptureProcess(port)
    try:
        yield process
    finally:
        process.stop()


def caught_up(timeout: float = 120.0) -> float:
    """Wait until the capture process has stored everything written until now (the slot
    confirmed past it); the seconds it took."""
    from django_mirror.capture.wal import slot

    until = lsn("pg_current_wal_insert_lsn")
    return wait_for(lambda: confirmed(slot.SLOT) >= until, timeout, "mirror_capture caught up")


# --- overhead -------------------------------------------------------------------------------


def overhead(db: str, port: int, quick: bool) -> Outcome:
    from django.db import transaction
    from django.db.models import Sum

    from benchmarks.benchapp.models import Follow, PlainFollow
    from django_mirror.config import conf
    from django_mirror.models import OutboxBatch
    from tests.wal_cluster import SOURCE

    assert conf.capture_mode() == "wal" and conf.get_settings().relay.on_commit == "off"
    assert conf.model_config(Follow) is not None and conf.model_config(PlainFollow) is None

    # Sections long beside the capture process's 0.2 s idle poll, so that it works
    # through most of a Follow section rather than after it.
    rounds = 3 if quick else 40
    min_rounds = 3 if quick else 6
    saves = 200 if quick else 400
    bulks = 4 if quick else 10
    numbers = itertools.count(1)
    now = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    captured = [0]
    waits: dict[str, list[float]] = {"Follow": [], "PlainFollow": []}
    after: list[str] = ["PlainFollow"]  # the model whose section ran last

    def take_outbox() -> None:
        """Count the captured events and empty the outbox, as the relay would meanwhile."""
        batches = OutboxBatch.objects.using(SOURCE)
        captured[0] += batches.aggregate(n=Sum("count"))["n"] or 0
        batches.all().delete()

    def build(model: type[Any], count: int) -> list[Any]:
        return [
            model(user_id=n, channel_id=n % 1_000, created_at=now, origin="web")
            for n in itertools.islice(numbers, count)
        ]

    def prepare(model: type[Any], size: int, running: bool) -> Callable[[], list[Any]]:
        def ready() -> list[Any]:
            if running:  # the last section's capture tail falls on neither side
                waits[after[0]].append(caught_up())
                take_outbox()
            after[0] = model.__name__
            return build(model, size)

        return ready

    def timed_saves(objs: list[Any]) -> None:
        for obj in objs:
            with transaction.atomic(using=SOURCE):
                obj.save(using=SOURCE)

    def timed_bulks(objs: list[Any]) -> None:
        manager = type(objs[0]).objects.using(SOURCE)
        for start in range(0, len(objs), BULK):
            with transaction.atomic(using=SOURCE):
                manager.bulk_create(objs[start : start + BULK])

    def measure(running: bool) -> list[tuple[str, int, list[list[float]]]]:
        mode = "mirror_capture running" if running else "no capture process"
        found = []
        for write, size, per, timed in (
            ("save()", saves, saves, timed_saves),
            ("bulk_create(1,000)", bulks * BULK, bulks, timed_bulks),
        ):
            log(f"wal-capture overhead ({mode}): {write}, {per} a section per model")
            variants = [(prepare(m, size, running), timed) for m in (Follow, PlainFollow)]
            # The rows with a target get the longer budget.
            budget = 3 if quick else (30 if running else 8)
            times = interleaved(variants, rounds, budget=budget, min_rounds=min_rounds)
            found.append((write, per, times))
        return found

    with capture_process(port):
        running = measure(running=True)
        caught_up()
        take_outbox()
    written = Follow.objects.using(SOURCE).count()
    assert captured[0] == written, f"{captured[0]} events captured for {written} rows written"
    tails = {model: statistics.mean(w) for model, w in waits.items() if w}
    log("wal-capture overhead: the capture process stopped")
    idle = measure(running=False)

    outcome = Outcome()
    notes = []
    for mode, figures, target in (
        ("mirror_capture running", running, OVERHEAD_TARGET),
        ("no capture process", idle, None),
    ):
        for write, per, times in figures:
            ratio = median_ratio(*times)
            outcome.rows.append(
                Row(
                    f"wal-capture: {write} CAPTURE wal / unmirrored, {mode}",
                    db,
                    f"{ratio:.2f}x",
                    f"<= {target}x" if target else "reported",
                    target is None or ratio <= target,
                    ratio,
                )
            )
            notes.append(overhead_note(f"{write} {mode}", times, per))
    outcome.notes.append(
        f"wal-capture overhead [{db}]: "
        + "; ".join(notes)
        + f"; every row written while the capture process ran was captured once "
        f"({captured[0]:,} events); it took {tails.get('Follow', 0):.2f} s on average after a "
        f"Follow section (untimed) until capture had stored it, "
        f"{tails.get('PlainFollow', 0):.2f} s after a PlainFollow one."
    )
    return outcome


# --- backlog: mirror_capture against pg_recvlogical ----------------------------------------


def fill(transactions: int, rows: int) -> int:
    """``transactions`` commits of ``rows`` new ``Follow`` rows each, made server-side
    (multi-row ``INSERT``s, as ``bulk_create`` writes them); the log position after."""
    from benchmarks.benchapp.models import Follow

    table = Follow._meta.db_table
    for t in range(transactions):
        execute(
            f"INSERT INTO {table} (user_id, channel_id, notifications, created_at, origin) "
            "SELECT n, n %% 1000, true, '2024-05-01 12:00+00', 'web' "
            "FROM generate_series(%s::bigint, %s::bigint) n",
            [t * rows + 1, (t + 1) * rows],
        )
    end = lsn("pg_current_wal_insert_lsn")
    flushed_to(end)
    return end


def drain_capture(end: int, rounds: list[tuple[float, int]]) -> int:
    """``Capturer`` rounds until everything up to ``end`` is stored (what ``mirror_capture
    --once`` does, without starting a process); the events stored. Each round's seconds
    and events are appended to ``rounds``."""
    from django_mirror.capture.wal import slot
    from tests.wal_cluster import SOURCE

    capturer = slot.Capturer(SOURCE)  # mirror_capture's default batch size
    events = 0
    try:
        while True:
            started = time.perf_counter()
            result = capturer.round()
            rounds.append((time.perf_counter() - started, result.events))
            events += result.events
            if not result.transactions and result.read_to >= end:
                return events
    finally:
        capturer.close()


def drain_raw(port: int, end: int, out: Path) -> int:
    """``pg_recvlogical`` reading ``RAW_SLOT`` to ``end`` into a file; the bytes it wrote."""
    from django_mirror.capture.wal import slot
    from tests import wal_cluster

    out.unlink(missing_ok=True)
    command = [
        str(wal_cluster.BIN / "pg_recvlogical"),
        *("-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "wal_source"),
        *("--slot", RAW_SLOT, "--start", "--endpos", slot.lsn_text(end), "-f", str(out)),
        *("-o", "proto_version=1", "-o", f"publication_names={slot.PUBLICATION}"),
        *("-o", "messages=true"),  # as mirror_capture reads it
    ]
    if os.geteuid() == 0:  # the cluster trusts local connections as postgres anyway
        command = ["runuser", "-u", "postgres", "--", *command]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    return out.stat().st_size


def backlog(db: str, port: int, quick: bool) -> Outcome:
    from django_mirror.models import OutboxBatch
    from tests.wal_cluster import SOURCE

    transactions = 20 if quick else 100
    rounds = 2 if quick else 3
    singles = 300 if quick else 2_000
    work = Path(tempfile.mkdtemp(prefix="wal-bench-"))
    os.chmod(work, 0o777)  # pg_recvlogical runs as postgres when this runs as root
    out = work / "raw.bin"
    outcome = Outcome()
    figures: list[tuple[str, int, list[float], list[float]]] = []
    #: Per shape, the last drain's rounds: (seconds, events stored).
    growth: dict[str, list[tuple[float, int]]] = {}
    try:
        for shape, commits, rows, repeat in (
            (f"{transactions} commits of {BULK:,} rows", transactions, BULK, rounds),
            (f"{singles:,} single-row commits", singles, 1, 1),
        ):
            ours: list[float] = []
            raw: list[float] = []
            events = commits * rows
            for round_ in range(repeat):
                fresh_slots()
                log(f"wal-capture backlog: {shape}, round {round_ + 1} of {repeat}")
                end = fill(commits, rows)
                sides = ["capture", "raw"] if round_ % 2 == 0 else ["raw", "capture"]
                for side in sides:
                    started = time.perf_counter()
                    if side == "capture":
                        growth[shape] = []
                        stored = drain_capture(end, growth[shape])
                        ours.append(time.perf_counter() - started)
                        assert stored == events, f"{stored} events stored of {events}"
                        counted = sum(
                            OutboxBatch.objects.using(SOURCE).values_list("count", flat=True)
                        )
                        assert counted == events, f"{counted} events in the outbox of {events}"
                    else:
                        size = drain_raw(port, end, out)
                        raw.append(time.perf_counter() - started)
                        # An insert of six columns is over 40 bytes of pgoutput.
                        assert size >= 40 * events, f"pg_recvlogical wrote {size} bytes"
            figures.append((shape, events, ours, raw))
    finally:
        out.unlink(missing_ok=True)
        work.rmdir()
    notes = []
    for shape, events, ours, raw in figures:
        rate = events / statistics.median(ours)
        raw_rate = events / statistics.median(raw)
        ratio = statistics.median(r / o for o, r in zip(ours, raw, strict=True))
        outcome.rows += [
            Row(
                f"wal-capture: mirror_capture events/s draining {shape}",
                db,
                f"{rate:,.0f}",
                f">= {DRAIN_TARGET:,}",
                rate >= DRAIN_TARGET,
                rate,
            ),
            Row(
                f"wal-capture: mirror_capture / pg_recvlogical events/s, {shape}",
                db,
                f"{ratio:.3f}x",
                "reported",
                True,
                ratio,
            ),
        ]
        # Per event, the first and the last full round (the tail's are smaller): a later
        # round of one drain costs more when the log is decoded again from the slot's
        # restart_lsn, which no running-transactions record in the backlog moves on.
        biggest = max(n for _, n in growth[shape])
        per_event = [seconds / n for seconds, n in growth[shape] if n >= biggest / 2]
        first, last = per_event[0], per_event[-1]
        notes.append(
            f"{shape} ({len(ours)} rounds): mirror_capture {min(ours):.2f}-{max(ours):.2f} s, "
            f"pg_recvlogical {min(raw):.2f}-{max(raw):.2f} s ({raw_rate:,.0f} events/s); "
            f"{first * 1e6:,.0f} us per event in the drain's first Capturer round, "
            f"{last * 1e6:,.0f} us in its last"
        )
    outcome.notes.append(f"wal-capture backlog [{db}]: " + "; ".join(notes) + ".")
    return outcome


# --- latency at a steady write rate ---------------------------------------------------------


def latency(db: str, port: int, quick: bool) -> Outcome:
    """At ``RATE`` writes/s, as the issue asks, then at ``LOW_RATE``: a pace capture keeps
    (single-row commits are its slowest case), which gives its latency when it does."""
    outcome = Outcome()
    for rate, seconds, patience in (
        (RATE, 3 if quick else 8, 5 if quick else 10),
        (LOW_RATE, 3 if quick else 6, 5 if quick else 10),
    ):
        found = paced(db, port, rate, seconds, patience)
        outcome.rows += found.rows
        outcome.notes += found.notes
    return outcome


def paced(db: str, port: int, rate: int, seconds: float, patience: float) -> Outcome:
    """Single-row commits at ``rate`` a second for ``seconds`` with the capture process
    running, then up to ``patience`` seconds for it to store them; the row of latencies."""
    import psycopg
    from django.db import connections

    from benchmarks.benchapp.models import Follow
    from django_mirror.models import OutboxBatch
    from tests.wal_cluster import SOURCE

    writes = int(rate * seconds)
    fresh_slots()
    table = Follow._meta.db_table
    outbox = OutboxBatch._meta.db_table
    committed: list[float] = []
    failure: list[BaseException] = []

    def writer() -> None:
        """Each commit at its slot in the schedule (late ones at once, so the rate holds
        on average). The log is flushed at each commit, as a production source commits,
        so the figure is capture's and not the cluster's asynchronous commit (which
        flushes up to three times ``wal_writer_delay`` later)."""
        params = connections[SOURCE].get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        try:
            with psycopg.connect(**params, autocommit=True) as conn:
                conn.execute("SET synchronous_commit = on")
                sql = (
                    f"INSERT INTO {table} (user_id, channel_id, notifications, created_at, "
                    "origin) VALUES (%s, 1, true, '2024-05-01 12:00+00', 'web')"
                )
                start = time.perf_counter()
                for i in range(writes):
                    delay = start + i / rate - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    conn.execute(sql, [i], prepare=True)
                    committed.append(time.perf_counter())
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)

    with capture_process(port):
        time.sleep(1.0)  # idle and polling, as in production
        log(f"wal-capture latency: {writes:,} single-row commits at {rate:,}/s")
        thread = threading.Thread(target=writer, daemon=True)
        began = time.perf_counter()
        thread.start()
        thread.join()
        wrote = time.perf_counter() - began
        if failure:
            raise failure[0]
        deadline = time.perf_counter() + patience
        while time.perf_counter() < deadline:
            if OutboxBatch.objects.using(SOURCE).count() >= writes:
                break
            time.sleep(0.05)
        waited = time.perf_counter() - committed[-1]
    found = execute(
        f"SELECT EXTRACT(EPOCH FROM {STORED_AT} - created_at)::float8, count "
        f"FROM {outbox} WHERE model = %s",
        [LABEL],
    )
    seen = [latency for latency, count in found for _ in range(count)]
    assert len(seen) <= writes, f"{len(seen)} events stored for {writes} writes"
    missing = writes - len(seen)
    # A write not stored yet has waited at least from its commit until now; the latest
    # commits are the ones missing (capture stores in commit order).
    bounds = [waited + committed[-1] - t for t in committed[len(seen) :]]
    everything = sorted(seen + bounds)

    def quantile(q: float) -> tuple[float, str]:
        """Milliseconds; ">=" when a write not stored yet may lie at or below it, its
        true latency unknown."""
        value = everything[min(len(everything) - 1, int(q * len(everything)))]
        lower = bool(bounds) and min(bounds) <= value
        return value, f"{'>= ' if lower else ''}{value * 1000:,.0f}"

    (_, p50), (p99_seconds, p99) = quantile(0.5), quantile(0.99)
    name = f"wal-capture: commit-to-outbox latency p50 / p99 at {rate:,} writes/s"
    return Outcome(
        [Row(name, db, f"{p50} / {p99} ms", "reported", True, p99_seconds)],
        [
            f"wal-capture latency at {rate:,}/s [{db}]: {writes:,} single-row commits in "
            f"{wrote:.1f} s ({writes / wrote:,.0f}/s); {len(seen):,} stored by "
            f"mirror_capture within {waited:.1f} s of the last commit"
            + (
                f" ({len(seen) / (wrote + waited):,.0f} events/s), {missing:,} not: capture "
                "did not keep pace, and those count with the time they had waited (lower "
                "bounds)"
                if missing
                else ""
            )
            + f"; min {everything[0] * 1000:,.0f} ms, max {everything[-1] * 1000:,.0f} ms."
        ],
    )


# --- the benchmark --------------------------------------------------------------------------


def run(db: str, quick: bool) -> Outcome:
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections
    from django.test import override_settings

    from django_mirror.models import OutboxBatch
    from tests import wal_cluster

    reason = wal_cluster.unavailable()
    if reason is not None:
        return skipped(db, reason)
    log("wal-capture: starting a PostgreSQL 15 cluster with wal_level = logical")
    cluster = wal_cluster.Cluster.start()
    aliases: list[str] = []
    try:
        aliases = attach(cluster.port)
        with override_settings(DJANGO_MIRROR=mirror_settings(settings.DJANGO_MIRROR)):
            for alias in aliases:
                call_command("migrate", database=alias, run_syncdb=True, verbosity=0)
            execute(
                f"ALTER TABLE {OutboxBatch._meta.db_table} ADD COLUMN {STORED_AT} "
                "timestamptz DEFAULT clock_timestamp()"
            )
            fresh_slots()
            outcome = Outcome()
            for part in (overhead, backlog, latency):
                found = part(db, cluster.port, quick)
                outcome.rows += found.rows
                outcome.notes += found.notes
        outcome.notes.append(
            f"wal-capture [{db}]: on a throwaway PostgreSQL 15 cluster (fsync, "
            "synchronous_commit and full_page_writes off), both sides of each figure on it."
        )
        return outcome
    finally:
        for alias in aliases:
            connections[alias].close()
        cluster.stop()


# --- this module as a script: mirror_capture on the cluster ----------------------------------


def main(port: int, args: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    from benchmarks import settings as bench_settings
    from tests import wal_cluster

    bench_settings.DATABASES.update(wal_cluster.databases(port))
    bench_settings.DJANGO_MIRROR = mirror_settings(bench_settings.DJANGO_MIRROR)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("mirror_capture", *args)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
