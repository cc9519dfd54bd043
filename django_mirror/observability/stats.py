"""Per-minute figures per model, kept in memory and written to ``MetricWindow`` rows.

The dashboard reads them back: counts (captured, replayed, read matches, ...) and read
latency histograms, summed over processes. Recording is a dict update under a lock;
the database write happens on a background thread (``runtime`` starts it) every
``SHADOW["STATS_INTERVAL"]`` seconds and at exit, and never raises.
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
import math
import os
import socket
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping

from django.conf import settings
from django.db import close_old_connections, connections
from django.utils import timezone

from django_mirror.config import conf
from django_mirror.core import failures
from django_mirror.core.background import ServiceThread
from django_mirror.core.locking import shared_in_memory

logger = logging.getLogger("django_mirror.stats")

#: Upper bounds (ms) of the latency histogram's buckets: 12% apart, 0.05 ms to ~60 s.
BUCKETS: tuple[float, ...] = tuple(round(0.05 * 1.12**i, 4) for i in range(124))
#: How long windows are kept.
RETENTION = dt.timedelta(days=2)


def _process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:100]


#: This process's name in ``MetricWindow`` rows; renewed in a forked child.
PROCESS = _process_name()

#: A model and a minute, counted from the epoch: a figure taken while ``USE_TZ`` was on
#: and one taken while it was off land in the same window, written as the setting is then.
_Key = tuple[str, int]
#: Minutes a window is kept in memory after it was last written.
KEPT_MINUTES = 5


def minute_start(number: int) -> dt.datetime:
    """The start of minute ``number`` as ``timezone.now()`` would give it now (aware
    with ``USE_TZ``, naive local time without)."""
    return dt.datetime.fromtimestamp(number * 60, dt.UTC if settings.USE_TZ else None)


class _Recorder(ServiceThread):
    name = "stats writer"
    thread_name = "django-mirror-stats"

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[_Key, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.latency: dict[_Key, dict[str, dict[int, int]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(int))
        )
        self.dirty: set[_Key] = set()
        self.writing = failures.RepeatedFailures(
            "stats", "the dashboard's figures could not be stored"
        )

    def key(self, model: str) -> _Key:
        """The model and the current minute (this runs on every committed write)."""
        return model, int(time.time() // 60)

    def add(self, model: str, name: str, count: int) -> None:
        key = self.key(model)
        with self.lock:
            self.counts[key][name] += count
            self.dirty.add(key)

    def observe(self, model: str, store: str, milliseconds: float) -> None:
        key = self.key(model)
        bucket = min(bisect.bisect_left(BUCKETS, milliseconds), len(BUCKETS) - 1)
        with self.lock:
            self.latency[key][store][bucket] += 1
            self.dirty.add(key)

    def after_fork(self) -> None:
        """A forked worker (gunicorn ``--preload``) starts with no figures and a name of
        its own: the parent writes what it counted, and workers must not overwrite each
        other's rows."""
        global PROCESS
        PROCESS = _process_name()
        self.__init__()  # type: ignore[misc]

    def _run(self) -> None:
        while not self.stopping:
            self.wake.wait(conf.get_settings().shadow.stats_interval)
            self.wake.clear()
            try:
                # An in-memory test database is left to explicit flush() calls.
                if self.dirty and not shared_in_memory(conf.source_alias()):
                    self.flush()  # never raises
                close_old_connections()
            except Exception:  # the thread outlives any one failure
                self.writing.failed()
        connections.close_all()  # this thread's own

    def flush(self) -> int:
        """Write every window changed since the last flush; returns how many."""
        from django_mirror.models import MetricWindow

        with self.lock:
            keys, self.dirty = self.dirty, set()
            rows = {
                key: (
                    dict(self.counts.get(key, {})),
                    {s: dict(h) for s, h in self.latency.get(key, {}).items()},
                )
                for key in keys
            }
            oldest = int(time.time() // 60) - KEPT_MINUTES
            for stale in [k for k in self.counts if k[1] < oldest]:
                self.counts.pop(stale, None)
                self.latency.pop(stale, None)
        if not rows:
            return 0
        using = conf.source_alias()
        try:
            # One upsert statement, no read first: on SQLite a read-then-write
            # transaction could deadlock with the app's own writers.
            MetricWindow.objects.using(using).bulk_create(
                [
                    MetricWindow(
                        model=model,
                        minute=minute_start(minute),
                        process=PROCESS,
                        counts=counts,
                        latency=latency,
                    )
                    for (model, minute), (counts, latency) in rows.items()
                ],
                update_conflicts=True,
                unique_fields=["model", "minute", "process"]
                if connections[using].features.supports_update_conflicts_with_target
                else None,
                update_fields=["counts", "latency"],
            )
            MetricWindow.objects.using(using).filter(minute__lt=timezone.now() - RETENTION).delete()
        except Exception:  # the dashboard misses a window; nothing else is affected
            self.writing.failed()
            with self.lock:
                self.dirty |= keys
            return 0
        self.writing.succeeded()
        return len(rows)


writer = _Recorder()
add = writer.add
observe = writer.observe
flush = writer.flush


def reset() -> None:
    """Forget every figure not yet written (tests start each from nothing)."""
    with writer.lock:
        writer.counts.clear()
        writer.latency.clear()
        writer.dirty.clear()


def merge_histograms(histograms: Iterable[Mapping[str, int]]) -> dict[int, int]:
    """Sum bucket counts (JSON turns bucket numbers into strings; this turns them back)."""
    total: dict[int, int] = defaultdict(int)
    for histogram in histograms:
        for bucket, count in histogram.items():
            total[int(bucket)] += count
    return dict(total)


def percentile(histogram: Mapping[int, int], fraction: float) -> float | None:
    """The upper bound (ms) of the bucket holding that share of reads; None when empty."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = math.ceil(total * fraction)
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return BUCKETS[bucket]
    return BUCKETS[-1]
