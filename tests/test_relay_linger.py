"""The after-commit relay thread (the default mode) gathers the commits of
``RELAY["LINGER"]`` seconds into one round, so a steady stream of small commits costs
one claim, put and delete per round instead of per commit; whoever waits for the
shipping (a graceful shutdown, a test) cuts the wait short."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from django.db import transaction

from django_mirror.models import OutboxBatch
from django_mirror.pipeline import relay
from tests.conftest import both_databases
from tests.faults import PutLog, configured_stream, hooked, stream_records, unique_stream_name
from tests.testapp.models import Author


def eventually(condition: Callable[[], bool], within: float) -> float:
    """Seconds until ``condition`` held, polled without asking the relay to hurry."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, f"not within {within} s"
        time.sleep(0.01)
    return time.monotonic() - started


def shipped_names(stream) -> list[str]:
    return [
        json.loads(data)["row"]["name"]
        for shard in stream_records(stream).values()
        for _, data in shard
    ]


@both_databases
def test_commits_within_the_linger_ship_in_one_round() -> None:
    with configured_stream({"LINGER": 2.0}, stream_name=unique_stream_name()) as stream:
        assert relay.shipper.wait_idle(30)  # no round of an earlier test's commits left
        log = PutLog()
        with hooked(stream.client, *log.hooks()):
            started = time.monotonic()
            for n in range(5):  # five requests' commits, milliseconds apart
                with transaction.atomic():
                    Author.objects.create(name=f"a{n}")
            assert time.monotonic() - started < 1.0, "the writes alone outlasted the linger"
            eventually(lambda: not OutboxBatch.objects.exists(), within=10)
        assert len(log.calls) == 1, log.calls
        assert sorted(shipped_names(stream)) == [f"a{n}" for n in range(5)]


@both_databases
def test_the_default_linger_ships_soon_without_anyone_waiting() -> None:
    with configured_stream(stream_name=unique_stream_name()) as stream:
        with transaction.atomic():
            Author.objects.create(name="Ada")
        waited = eventually(lambda: not OutboxBatch.objects.exists(), within=5)
        assert shipped_names(stream) == ["Ada"]
    assert waited < 5


@both_databases
def test_waiting_for_the_relay_cuts_its_linger_short() -> None:
    with configured_stream({"LINGER": 30.0}, stream_name=unique_stream_name()) as stream:
        with transaction.atomic():
            Author.objects.create(name="Ada")
        started = time.monotonic()
        assert relay.shipper.wait_idle(10)
        assert time.monotonic() - started < 10
        assert not OutboxBatch.objects.exists()
        assert shipped_names(stream) == ["Ada"]
