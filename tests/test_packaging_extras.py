"""What a plain install (no extras) does without the optional packages: statsd and
sentry-sdk are extras, so django-mirror must run, count nothing as failed and keep the
dashboard's figures when they are not importable."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

import pytest
from django.test import override_settings

from django_mirror.core import failures
from django_mirror.models import MetricWindow
from django_mirror.observability import reporting, stats
from tests.conftest import both_databases, drain_and_replay
from tests.testapp.models import Author


@pytest.fixture
def without_statsd(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``import statsd`` raises ImportError, as on an install without the extra."""
    monkeypatch.setitem(sys.modules, "statsd", None)
    reporting.sender.stop(5)  # drop the client made with the package
    reporting.sender.start()
    yield
    reporting.sender.stop(5)
    monkeypatch.undo()
    reporting.sender.start()


@pytest.mark.django_db(transaction=True)
def test_without_statsd_metrics_are_dropped_quietly_and_figures_kept(without_statsd, statsd):
    stats.flush()  # what earlier tests left
    before = failures.count
    reporting.incr("probe", 3, "extras.Probe")
    reporting.timing("probe", 1.5, "extras.Probe")
    reporting.gauge("probe.gauge", 7)
    assert statsd.lines() == []  # a real listener on STATSD_HOST hears nothing
    assert failures.count == before
    stats.flush()
    assert MetricWindow.objects.get(model="extras.Probe").counts == {"probe": 3}


@both_databases
def test_without_statsd_the_pipeline_runs(kinesis, without_statsd):
    before = failures.count
    Author.objects.create(name="no statsd")
    drain_and_replay()
    assert Author.objects.using("new").filter(name="no statsd").exists()
    assert failures.count == before


def test_without_statsd_a_configured_host_is_warned_about_once(without_statsd, caplog):
    with (
        caplog.at_level(logging.WARNING, logger="django_mirror.reporting"),
        override_settings(STATSD_HOST="127.0.0.1"),
    ):
        for _ in range(3):
            reporting.incr("probe")
    warnings = [r for r in caplog.records if "statsd package is not installed" in r.message]
    assert len(warnings) == 1


def test_without_sentry_sdk_a_mismatch_event_is_skipped(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "sentry_sdk", None)
    before = failures.count
    reporting.sentry_mismatch("read", "testapp.Book", "get(pk)", ["title"], ["1"], "differs")
    assert failures.count == before
