"""The dashboard's per-minute figures: kept per process, upserted, read back as totals
and latency percentiles."""

from __future__ import annotations

import pytest

from django_mirror.models import MetricWindow
from django_mirror.observability import stats


@pytest.mark.django_db(transaction=True)
def test_figures_are_upserted_per_model_minute_and_process():
    stats.flush()  # what earlier tests left
    for _ in range(3):
        stats.add("stats.Upserted", "read.match", 2)
    for ms in [1.0] * 90 + [100.0] * 10:
        stats.observe("stats.Upserted", "target", ms)
    assert stats.flush() == 1
    stats.add("stats.Upserted", "read.match", 1)  # same minute: the row is updated
    assert stats.flush() == 1
    assert stats.flush() == 0  # nothing new
    window = MetricWindow.objects.get(model="stats.Upserted")
    assert window.counts == {"read.match": 7}
    histogram = stats.merge_histograms([window.latency["target"]])
    assert sum(histogram.values()) == 100
    p50, p95 = stats.percentile(histogram, 0.5), stats.percentile(histogram, 0.95)
    assert p50 is not None and 1.0 <= p50 < 1.12
    assert p95 is not None and 100.0 <= p95 < 112.0
    assert stats.percentile({}, 0.5) is None


@pytest.mark.django_db(transaction=True)
def test_a_failed_flush_keeps_the_figures_for_the_next():
    stats.flush()
    stats.add("stats.Kept", "captured", 5)
    MetricWindow.objects.all().delete()
    from django.db import connection

    with connection.cursor() as cursor:
        table = connection.ops.quote_name(MetricWindow._meta.db_table)
        cursor.execute(f"ALTER TABLE {table} RENAME TO {connection.ops.quote_name('mw_away')}")
    try:
        assert stats.flush() == 0
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {connection.ops.quote_name('mw_away')} RENAME TO {table}")
    assert stats.flush() >= 1
    assert MetricWindow.objects.get(model="stats.Kept").counts == {"captured": 5}
