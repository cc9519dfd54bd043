"""Bulk copy: ``Copier`` (what ``mirror_copy`` runs) against the usual ways to move rows.

PostgreSQL: 1,000,000 follows copied by ``Copier`` into the target's ``Follow`` table,
against ``pg_dump -Fc -t benchapp_plainfollow | pg_restore`` of the same rows (held in
``PlainFollow``, the same table shape unmirrored) into the same target database, the
three alternating in one process. The target compares with ``pg_restore --data-only``
into the migrated, empty table, the one thing a copy can do while replay writes to that
table; the restore of the whole table (indexes built after the load) is reported
beside it. The process's peak RSS over all the copies is the memory figure. SQLite: ``Copier`` against a naive ORM loop that saves every row through
the target alias, then ``Copier``'s rows/s on a larger table.

Source rows are made inside the database (``INSERT ... SELECT`` over a series), so
filling a million rows costs seconds and no capture; nothing goes to the outbox.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import threading
import time
from typing import Any

from benchmarks.common import Outcome, Row, interleaved, log, pg_conninfo, spread
from benchmarks.replay_apply import follow_values
from benchmarks.replay_memory import peak_rss_mb

DUMP_TARGET = 1.5
NAIVE_TARGET = 1.0
PEAK_TARGET_MB = 300
COLUMNS = ("id", "user_id", "channel_id", "notifications", "created_at", "origin")


def fill_source(model: type[Any], first: int, last: int, alias: str = "default") -> None:
    """Insert follows ``first..last`` server-side, equal to ``follow_values(pk, 0)``."""
    from django.db import connections

    from django_mirror.capture.record import paused

    connection = connections[alias]
    qn = connection.ops.quote_name
    columns = ", ".join(qn(c) for c in COLUMNS)
    table = qn(model._meta.db_table)
    if connection.vendor == "postgresql":
        sql = (
            f"INSERT INTO {table} ({columns}) "
            "SELECT g, g, g %% 1000, g %% 3 <> 0, "
            "TIMESTAMPTZ '2024-05-01 00:00:00+00' + g * INTERVAL '1 second', "
            "(ARRAY['web', 'ios', 'android'])[g %% 3 + 1] "
            "FROM generate_series(%s, %s) AS g"
        )
    else:
        sql = (
            "WITH RECURSIVE g(n) AS (SELECT %s UNION ALL SELECT n + 1 FROM g WHERE n < %s) "
            f"INSERT INTO {table} ({columns}) "
            "SELECT n, n, n %% 1000, n %% 3 <> 0, datetime('2024-05-01', '+' || n || ' seconds'), "
            "CASE n %% 3 WHEN 0 THEN 'web' WHEN 1 THEN 'ios' ELSE 'android' END FROM g"
        )
    with paused(), connection.cursor() as cursor:  # raw SQL is never captured; paused anyway
        cursor.execute(sql, [first, last])
        if connection.vendor == "postgresql":
            cursor.execute(f"ANALYZE {table}")


def check_rows(model: type[Any], alias: str, pks: list[int]) -> None:
    """The filled rows read back through the ORM as the Python side would build them."""
    got = {row["id"]: row for row in model.objects.using(alias).filter(pk__in=pks).values(*COLUMNS)}
    for pk in pks:
        assert got[pk] == follow_values(pk, 0), (got.get(pk), follow_values(pk, 0))


def execute(alias: str, *statements: str) -> None:
    from django.db import connections

    with connections[alias].cursor() as cursor:
        for sql in statements:
            cursor.execute(sql)


def table_md5(alias: str, table: str, up_to: int) -> str:
    """One checksum over the rows ``1..up_to`` of a PostgreSQL table, in key order."""
    from django.db import connections

    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"SELECT count(*), md5(string_agg(md5(CAST(ROW({', '.join(COLUMNS)}) AS text)), '' "
            f"ORDER BY id)) FROM {table} WHERE id <= %s",
            [up_to],
        )
        count, digest = cursor.fetchone()
        return f"{count}:{digest}"


def copier() -> Any:
    from benchmarks.benchapp.models import Follow
    from django_mirror.config import conf
    from django_mirror.pipeline.copy import Copier

    config = conf.model_config(Follow)
    assert config is not None and config.target_alias == "new" and config.capturing
    return Copier(config)


def run_copier(rows: int, cap: float | None = None) -> Any:
    """Copy every source row; past ``cap`` seconds, stop after the current chunk instead."""
    job = copier()
    timer = threading.Timer(cap, lambda: setattr(job, "stop", True)) if cap else None
    if timer:
        timer.start()
    try:
        stats = job.run(restart=True)
    finally:
        if timer:
            timer.cancel()
    assert stats.copied == stats.read and stats.copied <= rows, stats.as_dict()
    assert stats.finished == (stats.copied == rows), stats.as_dict()
    return stats


def outbox_is_empty() -> None:
    from django_mirror.models import OutboxBatch

    assert not OutboxBatch.objects.exists(), "filling the source was captured"


# --- PostgreSQL: Copier vs pg_dump | pg_restore ----------------------------------------


def run_postgres(quick: bool) -> Outcome:
    from benchmarks.benchapp.models import Follow, PlainFollow
    from django_mirror.models import RowVersion

    rows = 100_000 if quick else 1_000_000
    cap = 30 if quick else 90  # a copy still running then is stopped: > 15x any baseline
    tools = [shutil.which("pg_dump"), shutil.which("pg_restore")]
    if not all(tools):
        return Outcome(
            [Row("copy: Copier / pg_dump|pg_restore", "postgres", "no pg_dump", "-", False)],
            ["copy [postgres]: pg_dump and pg_restore must be on PATH."],
        )
    follow, plain = Follow._meta.db_table, PlainFollow._meta.db_table
    versions = RowVersion._meta.db_table

    log(f"copy: filling {rows:,} source rows server-side")
    t0 = time.perf_counter()
    fill_source(Follow, 1, rows)
    execute("default", f"INSERT INTO {plain} SELECT {', '.join(COLUMNS)} FROM {follow}")
    execute("default", f"ANALYZE {plain}")
    check_rows(Follow, "default", [1, 2, 3, rows])
    outbox_is_empty()
    log(f"copy: filled in {time.perf_counter() - t0:.1f} s")
    copied: list[Any] = []

    def checkpoint(*first: str) -> None:
        """Start each side with no dirty pages the one before left to flush."""
        execute("new", *first, "CHECKPOINT")
        execute("default", "CHECKPOINT")

    def timed_ours(_: None) -> None:
        copied.append(run_copier(rows, cap))

    def restore(*options: str) -> None:
        dump = subprocess.Popen(
            [tools[0], "-Fc", "-t", plain, "-d", pg_conninfo("bench_source")],
            stdout=subprocess.PIPE,
        )
        done = subprocess.run(
            [tools[1], "--no-owner", *options, "-d", pg_conninfo("bench_target")],
            stdin=dump.stdout,
        )
        assert dump.stdout is not None
        dump.stdout.close()
        assert dump.wait() == 0 and done.returncode == 0, "pg_dump | pg_restore failed"

    log(f"copy: Copier vs pg_dump | pg_restore (two ways), {rows:,} rows each, alternating")
    ours, full, data_only = interleaved(
        [
            (lambda: checkpoint(f"TRUNCATE {follow}, {versions}"), timed_ours),
            (lambda: checkpoint(f"DROP TABLE {plain}"), lambda _: restore()),
            (lambda: checkpoint(f"TRUNCATE {plain}"), lambda _: restore("--data-only")),
        ],
        rounds=6,
        warmup=1 if quick else 0,
        budget=10 if quick else 60,
        min_rounds=1,
    )
    peak = peak_rss_mb()  # before the checks below, which are not part of the copy
    # Every copy holds exactly the source's rows. Ours took the COPY path, which locks the
    # table for each chunk instead of writing a version per row (Invariant 2).
    done = copied[-1].copied
    source_sum = table_md5("default", follow, rows)
    assert table_md5("new", plain, rows) == source_sum
    assert table_md5("new", follow, rows) == table_md5("default", follow, done)
    assert not RowVersion.objects.using("new").exists()
    finished = all(stats.finished for stats in copied)

    def ratios(baseline: list[float]) -> list[float]:
        return [a / b for a, b in zip(ours, baseline, strict=True)]

    ratio, full_ratio = statistics.median(ratios(data_only)), statistics.median(ratios(full))
    ours_s = statistics.median(ours)
    shown = f"{ratio:.1f}x" if finished else f"> {ratio:.0f}x"
    outcome = Outcome()
    outcome.rows.append(
        Row(
            f"copy: Copier / pg_dump|pg_restore --data-only, {rows:,} rows (time)",
            "postgres",
            shown,
            f"<= {DUMP_TARGET}x",
            finished and ratio <= DUMP_TARGET,
            ratio,
        )
    )
    outcome.rows.append(
        Row(
            f"copy: Copier / pg_dump|pg_restore of table, {rows:,} rows (time)",
            "postgres",
            f"{full_ratio:.1f}x" if finished else f"> {full_ratio:.0f}x",
            "none; reported",
            True,
            full_ratio,
        )
    )
    outcome.rows.append(
        Row(
            f"copy: peak RSS, {rows:,} rows",
            "postgres",
            f"{peak:.0f} MB" + ("" if finished else " (copy stopped)"),
            f"<= {PEAK_TARGET_MB} MB",
            finished and peak <= PEAK_TARGET_MB,
            peak,
        )
    )
    if finished:
        speed = f"Copier {ours_s:.1f} s ({rows / ours_s:,.0f} rows/s)"
    else:
        last = copied[-1]
        speed = (
            f"Copier STOPPED at the {cap} s cap after {last.copied:,} of {rows:,} rows "
            f"({last.rate:,.0f} rows/s on average; the ratios are lower bounds)"
        )
    outcome.notes.append(
        f"copy [postgres]: {speed}; pg_dump -Fc | pg_restore --data-only into the migrated, "
        f"empty table {statistics.median(data_only):.1f} s, pg_dump -Fc | pg_restore of the "
        f"whole table (created, COPY, then indexes built) {statistics.median(full):.1f} s. "
        f"{len(ours)} round(s), ratios {spread(ratios(data_only))} and "
        f"{spread(ratios(full))}. Copier inserts into the migrated, indexed table, each chunk "
        "under a lock that holds off replay's writes to it (Invariant 2). Peak RSS is of the "
        "process that ran every Copier round (pg_dump and pg_restore run in their own)."
    )
    return outcome


# --- SQLite: Copier vs a naive ORM loop, and rows/s ------------------------------------


def run_sqlite(quick: bool) -> Outcome:
    from benchmarks.benchapp.models import Follow
    from django_mirror.capture.record import paused
    from django_mirror.models import RowVersion

    naive_rows = 2_000 if quick else 10_000
    rate_rows = 50_000 if quick else 200_000
    follow, versions = Follow._meta.db_table, RowVersion._meta.db_table

    fill_source(Follow, 1, naive_rows)
    check_rows(Follow, "default", [1, 2, 3, naive_rows])
    outbox_is_empty()

    def prepare_ours() -> None:
        execute("new", f"DELETE FROM {follow}", f"DELETE FROM {versions}")

    def timed_ours(_: None) -> None:
        run_copier(naive_rows)

    def prepare_naive() -> None:
        execute("new", f"DELETE FROM {follow}", f"DELETE FROM {versions}")

    def timed_naive(_: None) -> None:
        with paused():
            for obj in Follow.objects.using("default").iterator():
                obj.save(using="new")

    log(f"copy: Copier vs naive iterate-and-save, {naive_rows:,} rows each, alternating")
    ours, naive = interleaved(
        [(prepare_ours, timed_ours), (prepare_naive, timed_naive)],
        rounds=10,
        budget=4 if quick else 20,
    )
    assert Follow.objects.using("new").count() == naive_rows
    speed = [b / a for a, b in zip(ours, naive, strict=True)]
    ratio = statistics.median(speed)

    log(f"copy: Copier rows/s on {rate_rows:,} rows")
    fill_source(Follow, naive_rows + 1, rate_rows)
    check_rows(Follow, "default", [naive_rows + 1, rate_rows])
    outbox_is_empty()
    (rate_s,) = interleaved([(prepare_ours, lambda _: run_copier(rate_rows))], 1, warmup=0)[0]
    peak = peak_rss_mb()
    got = list(Follow.objects.using("new").order_by("id").values_list(*COLUMNS))
    want = list(Follow.objects.using("default").order_by("id").values_list(*COLUMNS))
    assert got == want

    outcome = Outcome()
    outcome.rows.append(
        Row(
            f"copy: Copier / naive ORM save loop, {naive_rows:,} rows (speed)",
            "sqlite",
            f"{ratio:.1f}x",
            f">= {NAIVE_TARGET}x",
            ratio >= NAIVE_TARGET,
            ratio,
        )
    )
    outcome.rows.append(
        Row(
            f"copy: Copier rows/s, {rate_rows:,} rows (absolute)",
            "sqlite",
            f"{rate_rows / rate_s:,.0f}/s",
            "none; reported",
            True,
            rate_rows / rate_s,
        )
    )
    outcome.notes.append(
        f"copy [sqlite]: {naive_rows:,} rows in {statistics.median(ours):.2f} s by Copier vs "
        f"{statistics.median(naive):.2f} s by `for obj in Follow.objects.using('default')"
        ".iterator(): obj.save(using='new')` (capture paused, one autocommit per row, "
        f"UPDATE then INSERT); {len(speed)} rounds, ratios {spread(speed)}. Then "
        f"{rate_rows:,} rows in {rate_s:.1f} s; peak RSS {peak:.0f} MB."
    )
    return outcome


def run(db: str, quick: bool) -> Outcome:
    return run_postgres(quick) if db == "postgres" else run_sqlite(quick)
