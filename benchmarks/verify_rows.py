"""Verify speed and memory: ``Verifier`` (what ``mirror_verify`` runs) over 1,000,000 rows.

Source and target ``Follow`` tables are filled server-side with the very rows a copy
leaves behind (``copy_rows`` checks that a copy's target equals its source), so this
process never runs a copy and its peak RSS is verify's alone. Verify runs with
``mirror_verify``'s defaults (ranges of 1,000 keys, checksums inside PostgreSQL) and
must find no difference; a last, untimed run over a tampered target must find exactly
the rows changed.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from benchmarks.common import Outcome, Row, log
from benchmarks.copy_rows import check_rows, execute, fill_source, outbox_is_empty
from benchmarks.replay_memory import peak_rss_mb

RATE_TARGET = 200_000
PEAK_TARGET_MB = 300


def verifier() -> Any:
    from benchmarks.benchapp.models import Follow
    from django_mirror.config import conf
    from django_mirror.pipeline.verify import Verifier

    config = conf.model_config(Follow)
    assert config is not None and config.target_alias == "new"
    return Verifier(config, chunk_size=1000, recheck_delay=0)


def run(db: str, quick: bool) -> Outcome:
    from benchmarks.benchapp.models import Follow

    rows = 100_000 if quick else 1_000_000
    runs, budget = (2, 5) if quick else (2, 25)
    log(f"verify: filling {rows:,} rows on both sides server-side")
    fill_source(Follow, 1, rows, "default")
    fill_source(Follow, 1, rows, "new")
    check_rows(Follow, "new", [1, 2, 3, rows])
    outbox_is_empty()

    seconds: list[float] = []
    started = time.monotonic()
    method = ""
    while len(seconds) < runs and (not seconds or time.monotonic() - started < budget):
        log(f"verify: run {len(seconds) + 1} over {rows:,} rows")
        t0 = time.perf_counter()
        stats = verifier().run()
        seconds.append(time.perf_counter() - t0)
        assert stats.rows == rows and not stats.suspected, stats.as_dict()
        method = stats.method
    peak = peak_rss_mb()

    # Not timed: the same walk over a tampered target finds exactly what was changed.
    table = Follow._meta.db_table
    execute(
        "new",
        f"UPDATE {table} SET origin = 'tv' WHERE id = {rows // 2}",
        f"DELETE FROM {table} WHERE id = {rows // 3}",
    )
    found = {(d.kind, d.pk) for d in verifier().run().differences}
    assert found == {("changed", rows // 2), ("missing", rows // 3)}, found

    rate = rows / statistics.median(seconds)
    outcome = Outcome()
    outcome.rows.append(
        Row(
            f"verify: rows/s, {rows:,} rows",
            db,
            f"{rate:,.0f}/s",
            f">= {RATE_TARGET:,}/s",
            rate >= RATE_TARGET,
            rate,
        )
    )
    outcome.rows.append(
        Row(
            f"verify: peak RSS, {rows:,} rows",
            db,
            f"{peak:.0f} MB",
            f"<= {PEAK_TARGET_MB} MB",
            peak <= PEAK_TARGET_MB,
            peak,
        )
    )
    times = ", ".join(f"{s:.1f}" for s in seconds)
    outcome.notes.append(
        f"verify [{db}]: {rows:,} identical rows in {times} s ({len(seconds)} runs, median "
        f"taken), {method} checksums over ranges of 1,000 keys; peak RSS {peak:.0f} MB. A "
        "further run found exactly the one changed and the one deleted target row."
    )
    return outcome
