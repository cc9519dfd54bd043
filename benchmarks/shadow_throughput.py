"""Shadow-read throughput: comparisons per second the background pool sustains.

``Follow`` is put in phase "mirror" with source and target holding the same 10,000
rows. A loop of single-row ``Follow.objects.get(pk=...)`` runs inside
``shadow_reads(rate=1.0)`` for a few seconds, so every read is queued for the pool;
then the pool is left to drain. The figure is the comparisons counted by the
dashboard's figures (``read.compared``, read back from ``MetricWindow``) divided by the
time from the first read until the pool was idle, for ``POOL_SIZE`` 1 and 4 in
alternating rounds, each round with a fresh pool.

The loop's own reads run in this process too and share the interpreter with the pool,
as requests do in production; the notes also give the rate of the drain alone, once
the loop had stopped. The queue is made large enough and the timeout long enough that
no read is skipped or given up, so every read is compared. The target, at least
1,000 comparisons/s, is ours: ten times the reads a busy process would shadow at a
sample rate of a few percent.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

from benchmarks.common import Outcome, Row, log
from benchmarks.copy_rows import check_rows, fill_source

RATE_TARGET = 1_000
ROWS = 10_000
POOL_SIZES = (1, 4)


def compared_so_far(label: str) -> dict[str, int]:
    """This process's shadow-read counters for ``label``, as the dashboard stores them."""
    from django_mirror.models import MetricWindow
    from django_mirror.observability import stats

    stats.flush()
    totals: dict[str, int] = {}
    windows = MetricWindow.objects.filter(model=label, process=stats.PROCESS)
    for counts in windows.values_list("counts", flat=True):
        for name, n in counts.items():
            totals[name] = totals.get(name, 0) + n
    return totals


def mirror_settings(pool_size: int) -> dict[str, Any]:
    from django.conf import settings

    base = settings.DJANGO_MIRROR
    return {
        **base,
        "MODELS": {"benchapp.Follow": {"target": "new", "phase": "mirror"}},
        "SHADOW": {"POOL_SIZE": pool_size, "QUEUE_SIZE": 1_000_000, "TIMEOUT": 300.0},
    }


def one_round(pool_size: int, seconds: float, rng: random.Random) -> dict[str, float]:
    """Reads for ``seconds``, then the drain: comparisons/s overall and of the drain."""
    from django.test.utils import override_settings

    from benchmarks.benchapp.models import Follow
    from django_mirror.config import conf
    from django_mirror.shadow import get_pool, shadow_reads

    label = Follow._meta.label
    with override_settings(DJANGO_MIRROR=mirror_settings(pool_size)):
        config = conf.model_config(Follow)
        assert config is not None and config.phase == "mirror"
        pool = get_pool()
        assert pool.size == pool_size and not pool.pending
        before = compared_so_far(label)
        reads = 0
        with shadow_reads(rate=1.0):
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                for _ in range(50):
                    Follow.objects.get(pk=rng.randint(1, ROWS))
                reads += 50
            produced = time.perf_counter()
            backlog = pool.pending
        assert pool.wait_idle(300), "the shadow pool did not drain"
        drained = time.perf_counter()
        after = compared_so_far(label)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    compared = delta.get("read.compared", 0)
    assert compared == reads == delta.get("read.match", 0), (reads, delta)
    return {
        "rate": compared / (drained - t0),
        "reads_per_s": reads / (produced - t0),
        "backlog": backlog,
        "drain_rate": backlog / (drained - produced) if backlog >= 100 else float("nan"),
    }


def run(db: str, quick: bool) -> Outcome:
    from benchmarks.benchapp.models import Follow

    rounds, seconds = (2, 1.0) if quick else (6, 3.0)
    log(f"shadow throughput: {ROWS:,} identical rows on both sides")
    fill_source(Follow, 1, ROWS, "default")
    fill_source(Follow, 1, ROWS, "new")
    check_rows(Follow, "new", [1, 2, ROWS])

    rng = random.Random(2024)
    results: dict[int, list[dict[str, float]]] = {size: [] for size in POOL_SIZES}
    one_round(POOL_SIZES[0], 0.2, rng)  # warm-up: connections, query compilation
    for r in range(rounds):
        for size in POOL_SIZES if r % 2 == 0 else reversed(POOL_SIZES):
            log(f"shadow throughput: round {r + 1}/{rounds}, POOL_SIZE {size}, {seconds:.0f} s")
            results[size].append(one_round(size, seconds, rng))

    outcome = Outcome()
    details = []
    for size in POOL_SIZES:
        runs = results[size]
        rate = statistics.median(r["rate"] for r in runs)
        outcome.rows.append(
            Row(
                f"shadow throughput: comparisons/s of get(), POOL_SIZE {size}",
                db,
                f"{rate:,.0f}/s",
                f">= {RATE_TARGET:,}/s (ours)",
                rate >= RATE_TARGET,
                rate,
            )
        )
        drains = [r["drain_rate"] for r in runs if r["drain_rate"] == r["drain_rate"]]
        drain = f"{statistics.median(drains):,.0f}/s" if drains else "n/a (no backlog)"
        details.append(
            f"POOL_SIZE {size}: {rate:,.0f} comparisons/s "
            f"({min(r['rate'] for r in runs):,.0f}-{max(r['rate'] for r in runs):,.0f} over "
            f"{len(runs)} rounds), reads queued at {statistics.median(r['reads_per_s'] for r in runs):,.0f}/s, "
            f"backlog when the loop stopped {statistics.median(r['backlog'] for r in runs):,.0f}, "
            f"drain alone {drain}"
        )
    outcome.notes.append(
        f"shadow throughput [{db}]: single-row get() by primary key, every read shadowed "
        f"and compared, all matching; {'; '.join(details)}. Rates are medians of rounds "
        "from the first read until the pool was idle."
    )
    return outcome
