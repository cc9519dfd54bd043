"""Invariant 2 under real contention: many transactions fighting over the same rows on
PostgreSQL, two relays shipping meanwhile, then a replay fed duplicated and reordered
records over several shards. The target must still equal the source row for row."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter as Tally

import pytest
from django.db import DatabaseError, connections, transaction
from django.db.models import F

from django_mirror.models import DeadLetter
from django_mirror.pipeline import relay
from django_mirror.pipeline.replay import Replayer
from tests.conftest import assert_mirrored, both_databases, in_thread
from tests.faults import (
    DuplicateAndShuffle,
    ShardReads,
    configured_stream,
    hooked,
    stream_records,
    unique_stream_name,
)
from tests.testapp.models import Counter

WORKERS = 8
ROWS = 20
SECONDS = 3.0


@pytest.fixture
def postgres() -> None:
    vendor = connections["default"].vendor
    if vendor != "postgresql":
        pytest.skip(
            f"PostgreSQL only (this pass runs on {vendor}): set DATABASE_URL and "
            "TARGET_DATABASE_URL to postgres:// URLs to hammer rows with real row locks"
        )


def write_once(rng: random.Random) -> None:
    """One transaction doing one of the write paths users mix on a hot row."""
    name = f"row{rng.randrange(ROWS)}"
    action = rng.random()
    with transaction.atomic():
        if action < 0.25:
            Counter.objects.filter(name=name).update(value=F("value") + 1)
        elif action < 0.45:
            counter = Counter.objects.filter(name=name).first()
            if counter is not None:
                counter.value = F("value") + 10
                counter.save(update_fields=["value"])
        elif action < 0.55:
            Counter.objects.filter(name=name).delete()
        elif action < 0.65:
            counter = Counter.objects.filter(name=name).first()
            if counter is not None:
                counter.delete()
        elif action < 0.85:
            Counter.objects.get_or_create(name=name, defaults={"value": rng.randrange(100)})
        else:
            Counter.objects.filter(name=name).delete()
            Counter.objects.create(name=name, value=-rng.randrange(100))


@both_databases
def test_hammered_rows_converge(postgres: None, aws: None) -> None:
    with configured_stream(stream_name=unique_stream_name(), shard_count=4) as stream:
        Counter.objects.bulk_create([Counter(name=f"row{i}") for i in range(ROWS)])
        deadline = time.monotonic() + SECONDS
        stop = threading.Event()
        errors: list[BaseException] = []
        done = Tally[str]()
        lock = threading.Lock()

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < deadline:
                try:
                    write_once(rng)
                    outcome = "ok"
                except DatabaseError:  # deadlock, a unique race, a row deleted under us
                    outcome = "retried"
                with lock:
                    done[outcome] += 1

        def relay_loop() -> None:
            while not stop.is_set():
                if relay.ship_once(limit=20).batches == 0:
                    time.sleep(0.01)

        relays = [in_thread(relay_loop, errors) for _ in range(2)]
        workers = [in_thread(lambda s=seed: worker(s), errors) for seed in range(WORKERS)]
        for thread in workers:
            thread.join()
        stop.set()
        for thread in relays:
            thread.join()
        assert not errors, errors
        assert done["ok"] > 100, done
        relay.drain()
        assert relay.backlog() == 0

        shipped = stream_records(stream).values()
        ids = Tally(json.loads(data)["id"] for records in shipped for _, data in records)
        assert set(ids.values()) == {1}, "two relays shipped one batch twice"

        shuffle = DuplicateAndShuffle(seed=99, rate=0.5)
        with hooked(stream.client, *ShardReads(shuffle).hooks()):
            Replayer(batch_size=50).run(until_caught_up=True)
        assert shuffle.added > 0
        assert not DeadLetter.objects.exists()
    assert_mirrored(Counter)
