"""Metrics reach a real statsd listener over UDP, and never break what they measure."""

from __future__ import annotations

from django.db import transaction
from django.test import override_settings

from django_mirror.core import failures
from django_mirror.observability import reporting
from tests.conftest import both_databases, drain_and_replay
from tests.testapp.models import Author, Counter


@both_databases
def test_pipeline_reports_captured_relayed_replayed_backlog_and_lag(kinesis, statsd):
    with transaction.atomic():
        Author.objects.bulk_create([Author(name=f"a{i}") for i in range(5)])
    with transaction.atomic():
        Author.objects.create(name="never")
        transaction.set_rollback(True)
    Counter.objects.create(name="c")
    drain_and_replay()
    lines = statsd.lines()
    assert statsd.total(lines, "django_mirror.captured.testapp_author") == 5  # not the rollback
    assert statsd.total(lines, "django_mirror.captured.testapp_counter") == 1
    assert statsd.total(lines, "django_mirror.relayed.testapp_author") == 5
    assert statsd.total(lines, "django_mirror.replayed.testapp_author") == 5
    assert statsd.total(lines, "django_mirror.replayed.testapp_counter") == 1
    assert statsd.total(lines, "django_mirror.relay.backlog", "g") == 0
    shard = kinesis.shards()[0].shard_id.lower()
    assert statsd.total(lines, f"django_mirror.replay.lag_ms.{shard}", "g") == 0


@both_databases
def test_prefix_is_honoured(kinesis, statsd):
    with override_settings(STATSD_PREFIX="web"):
        Author.objects.create(name="x")
    assert statsd.total(statsd.lines(), "web.django_mirror.captured.testapp_author") == 1


@both_databases
def test_a_broken_statsd_never_breaks_a_write(kinesis):
    before = failures.count
    with override_settings(STATSD_HOST="127.0.0.1", STATSD_PORT="not-a-port"):
        Author.objects.create(name="still saved")
        drain_and_replay()
    assert Author.objects.using("new").filter(name="still saved").exists()
    assert failures.count > before


def test_every_timer_sample_is_sent_several_a_packet(statsd):
    samples = [n / 8 for n in range(300)]
    for milliseconds in samples:
        reporting.timing("probe", milliseconds, "testapp.Book")
    lines = [
        line for line in statsd.lines() if line.startswith("django_mirror.probe.testapp_book:")
    ]
    assert all(line.endswith("|ms") for line in lines)
    assert sorted(float(line.split(":")[1].split("|")[0]) for line in lines) == samples
    assert statsd.packets <= len(samples) / 10


def test_stopping_the_sender_closes_its_socket_and_a_new_one_opens_after():
    """Nothing is left open at exit (the runtime stops the sender), and a process that
    goes on (tests, a restarted runtime) gets a fresh client."""
    client = reporting._statsd()
    socket = client._sock
    reporting.sender.stop(5)
    try:
        assert client._sock is None and socket.fileno() == -1
        assert reporting._statsd() is not client
    finally:
        reporting.sender.start()
