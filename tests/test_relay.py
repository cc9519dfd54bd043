"""Relay under a misbehaving Kinesis: throttling, partial failures, requests that never
succeed and a stream that cannot be reached at commit time. Nothing may be lost: the
outbox keeps every event until Kinesis acknowledged it, and the target converges."""

from __future__ import annotations

import json
import time
from collections import Counter as Tally

import pytest
from django.core.management import CommandError, call_command
from django.db.models import F
from django.test import override_settings

from django_mirror.models import OutboxBatch
from django_mirror.pipeline import relay
from django_mirror.pipeline.replay import Replayer
from django_mirror.streams import KinesisStream
from django_mirror.streams.base import StreamError
from tests.conftest import assert_mirrored, both_databases, drain_and_replay
from tests.faults import (
    FailCalls,
    PutLog,
    RejectRecords,
    configured_stream,
    hooked,
    mirror_settings,
    stream_records,
    unique_stream_name,
)
from tests.testapp.models import Author, Book, Counter, Tag

THROTTLED = "ProvisionedThroughputExceededException"

#: These tests ship when they mean to, under the faults they set up.
pytestmark = pytest.mark.usefixtures("relay_off")


def make_writes() -> int:
    """A mix of write paths in several transactions; returns the number of outbox batches."""
    ada = Author.objects.create(name="Ada")
    bob = Author.objects.create(name="Bob")
    book = Book.objects.create(author=ada, editor=bob, title="Notes", pages=1, isbn="978-1")
    book.tags.add(Tag.objects.create(name="math"))
    Counter.objects.bulk_create([Counter(name=f"c{i}") for i in range(30)])
    Counter.objects.filter(name__in=["c1", "c2", "c3"]).update(value=F("value") + 7)
    Counter.objects.filter(name="c4").delete()
    Book.objects.filter(pk=book.pk).update(pages=F("pages") + 1)
    bob.delete()
    return OutboxBatch.objects.count()


def shipped_events(stream: KinesisStream) -> list[dict]:
    return [json.loads(data) for shard in stream_records(stream).values() for _, data in shard]


MODELS = (Author, Book, Counter, Tag, Book.tags.through)


@both_databases
def test_throttled_requests_are_retried_until_accepted(kinesis: KinesisStream) -> None:
    """The first three PutRecords calls are throttled: put backs off, retries, ships all."""
    make_writes()
    events = relay.backlog()
    log, throttle = PutLog(), FailCalls("PutRecords", THROTTLED, times=3)
    with hooked(kinesis.client, *log.hooks(), *throttle.hooks()):
        result = relay.drain()
    assert throttle.failed == 3
    assert len(log.calls) == 4  # three refused attempts, then the one that went through
    assert result.events == events and result.failed_batches == 0
    assert relay.backlog() == 0 and not OutboxBatch.objects.exists()
    assert len(shipped_events(kinesis)) == events  # each once: refused calls stored nothing
    drain_and_replay()
    assert_mirrored(*MODELS)


@both_databases
def test_partial_failure_resends_only_the_failed_records(kinesis: KinesisStream) -> None:
    """Kinesis refuses a third of the records of one request: exactly those are sent again.
    Plain records, one per event (a refused aggregate: tests/test_aggregation.py)."""
    kinesis.aggregate = False
    make_writes()
    events = relay.backlog()
    rejected_keys = {f"testapp.counter:{c.pk}" for c in Counter.objects.all()[::3]}
    log = PutLog()
    reject = RejectRecords(lambda key, data: key.lower() in rejected_keys, times=1)
    with hooked(kinesis.client, *log.hooks(), *reject.hooks()):
        relay.drain()
    assert reject.rejected, "the fault never fired"
    assert len(log.calls) == 2
    assert len(log.calls[0]) == events
    assert sorted(data for _, data in log.calls[1]) == sorted(reject.rejected)
    ids = Tally(event["id"] for event in shipped_events(kinesis))
    assert len(ids) == events and set(ids.values()) == {1}  # none lost, none doubled
    assert relay.backlog() == 0
    drain_and_replay()
    assert_mirrored(*MODELS)


@both_databases
def test_failure_after_all_attempts_keeps_the_outbox(kinesis: KinesisStream) -> None:
    """When Kinesis never accepts a request, every batch stays in the outbox, counted as an
    attempt, the command fails loudly, and a later relay ships them all."""
    batches = make_writes()
    ids = sorted(OutboxBatch.objects.values_list("id", flat=True))
    with hooked(kinesis.client, *FailCalls("PutRecords", THROTTLED).hooks()):
        result = relay.ship_once()
        assert result.batches == 0 and result.events == 0
        assert result.failed_batches == batches and result.kept == ids
        assert sorted(OutboxBatch.objects.values_list("id", flat=True)) == ids
        assert set(OutboxBatch.objects.values_list("attempts", flat=True)) == {1}
        with pytest.raises(CommandError, match="stay in the outbox"):
            call_command("mirror_relay", "--once", verbosity=0)
    assert set(OutboxBatch.objects.values_list("attempts", flat=True)) == {2}
    assert shipped_events(kinesis) == []
    call_command("mirror_relay", "--once", verbosity=0)
    assert not OutboxBatch.objects.exists()
    Replayer().run(until_caught_up=True)
    assert_mirrored(*MODELS)


@both_databases
def test_one_refused_batch_does_not_hold_back_the_others(kinesis: KinesisStream) -> None:
    """Records of one author are refused on every attempt: only their batch is kept. Plain
    records, so the author's events are records of their own."""
    kinesis.aggregate = False
    make_writes()
    ada = Author.objects.get(name="Ada")
    ada_batches = set(
        OutboxBatch.objects.filter(model="testapp.Author").values_list("id", flat=True)
    )
    ada_key = f"testapp.author:{ada.pk}"
    reject = RejectRecords(lambda key, data: key.lower() == ada_key, times=None)
    with hooked(kinesis.client, *reject.hooks()):
        result = relay.ship_once()
    assert reject.affected == kinesis.max_attempts
    kept = set(result.kept)
    assert kept and kept <= ada_batches
    assert set(OutboxBatch.objects.values_list("id", flat=True)) == kept
    assert result.batches > 0
    drain_and_replay()
    assert_mirrored(*MODELS)


@both_databases
def test_a_round_of_several_parts_puts_them_in_order(
    kinesis: KinesisStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round is put a part at a time, the next encoded meanwhile: every part goes
    out, one after another, and each row's events stay in commit order on its shard."""
    monkeypatch.setattr(relay, "PART_EVENTS", 4)
    batches = make_writes()
    log = PutLog()
    with hooked(kinesis.client, *log.hooks()):
        result = relay.ship_once()
    assert result.batches == batches and not OutboxBatch.objects.exists()
    assert len(log.calls) > 1
    for shard in stream_records(kinesis).values():
        per_row: dict[tuple[str, str], list[int]] = {}
        for _, data in shard:
            event = json.loads(data)
            per_row.setdefault((event["model"], str(event["pk"])), []).append(event["version"])
        assert all(versions == sorted(versions) for versions in per_row.values()), per_row
    Replayer().run(until_caught_up=True)
    assert_mirrored(*MODELS)


@both_databases
def test_a_part_that_cannot_be_put_keeps_every_batch_of_its_round(
    kinesis: KinesisStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay, "PART_EVENTS", 4)
    make_writes()
    ids = sorted(OutboxBatch.objects.values_list("id", flat=True))
    with hooked(kinesis.client, *FailCalls("PutRecords", "AccessDeniedException").hooks()):
        with pytest.raises(StreamError, match="AccessDenied"):
            relay.ship_once()
    kept = OutboxBatch.objects.order_by("id")
    assert [b.id for b in kept] == ids
    assert {(b.attempts, b.claimed_until) for b in kept} == {(1, None)}
    drain_and_replay()
    assert_mirrored(*MODELS)


@both_databases
def test_kinesis_unreachable_at_commit_time(moto_server: str) -> None:
    """Shipping in the committing thread against a closed port: every write succeeds at
    once, the outbox keeps all events, and ``mirror_relay --once`` ships them later."""
    down = {"endpoint_url": "http://127.0.0.1:9", "max_attempts": 2, "connect_timeout": 0.2}
    with override_settings(DJANGO_MIRROR=mirror_settings(relay={"ON_COMMIT": "sync"}, **down)):
        started = time.monotonic()
        batches = make_writes()
        Book.objects.filter(title="Notes").update(title=F("title"))
        elapsed = time.monotonic() - started
        events = relay.backlog()
        attempts = list(OutboxBatch.objects.values_list("attempts", flat=True))
    # Each commit gives up after its two refused connections (and botocore's backoff
    # between them), never botocore's default 60 s timeouts and retries.
    commits = batches + 1
    assert elapsed < 2.0 * commits, f"{commits} commits waited {elapsed:.1f}s for the stream"
    assert OutboxBatch.objects.count() == batches + 1 and events > 0
    assert min(attempts) >= 1  # every commit tried to ship, and kept its events
    with configured_stream(endpoint_url=moto_server, stream_name=unique_stream_name()) as stream:
        call_command("mirror_relay", "--once", verbosity=0)
        assert relay.backlog() == 0
        assert len(shipped_events(stream)) == events
        Replayer().run(until_caught_up=True)
    assert_mirrored(*MODELS)
