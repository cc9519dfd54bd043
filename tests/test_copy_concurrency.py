"""Step 2 of the runbook as it happens in production, on PostgreSQL: ``mirror_copy`` pages
through a table while eight writers keep updating, deleting and inserting its rows and a
replay process applies their events to the same target rows. Once relay and replay
drain, ``mirror_verify`` must find no difference. And the one race a copy chunk must
close, made to happen every time: replay deleting a row the chunk is inserting."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter as Tally
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connections, transaction
from django.db.models import F

from django_mirror import paused
from django_mirror.config import conf
from django_mirror.models import DeadLetter, RowVersion
from django_mirror.pipeline import relay
from django_mirror.pipeline.copy import Copier
from django_mirror.pipeline.replay import Replayer
from django_mirror.targets.database import DatabaseTarget
from tests.conftest import (
    assert_mirrored,
    both_databases,
    delete_event,
    drain_and_replay,
    in_thread,
)
from tests.faults import configured_stream, unique_stream_name
from tests.testapp.models import Author, Counter

WRITERS = 8
ROWS = 600  # pre-existing rows per model, written before capture was switched on
CHUNK = 20
THROTTLE = 800  # rows/s: the copy of 2 x ROWS rows takes about 1.5 s


@pytest.fixture
def postgres() -> None:
    vendor = connections["default"].vendor
    if vendor != "postgresql" or connections["new"].vendor != "postgresql":
        pytest.skip(
            f"PostgreSQL only (this pass runs on {vendor}): set DATABASE_URL and "
            "TARGET_DATABASE_URL to postgres:// URLs for writers, copy and replay that "
            "really run at the same time"
        )


def write_once(rng: random.Random, author_pks: list[int]) -> None:
    """One transaction doing one of the writes a live service makes to copied rows."""
    action = rng.random()
    name = f"c{rng.randrange(ROWS)}"
    author_pk = rng.choice(author_pks)
    with transaction.atomic():
        if action < 0.2:
            Counter.objects.filter(name=name).update(value=F("value") + 1)
        elif action < 0.3:
            counter = Counter.objects.filter(name=name).first()
            if counter is not None:
                counter.value = F("value") * 2
                counter.save(update_fields=["value"])
        elif action < 0.4:
            Counter.objects.filter(name=name).delete()
        elif action < 0.5:  # a deleted name comes back under a new key
            Counter.objects.get_or_create(name=name, defaults={"value": -1})
        elif action < 0.65:
            Author.objects.filter(pk=author_pk).update(name=f"renamed {rng.random():.6f}")
        elif action < 0.75:
            Author.objects.filter(pk=author_pk).delete()
        elif action < 0.85:  # a deleted row comes back under its old key
            Author.objects.get_or_create(pk=author_pk, defaults={"name": "back"})
        else:
            Author.objects.create(name="new")


@both_databases
def test_copy_while_writers_and_replay_run_verifies_clean(postgres: None, aws: None) -> None:
    with configured_stream(stream_name=unique_stream_name(), shard_count=2):
        with paused():
            Counter.objects.bulk_create([Counter(name=f"c{i}", value=i) for i in range(ROWS)])
            authors = Author.objects.bulk_create([Author(name=f"a{i}") for i in range(ROWS)])
        author_pks = [author.pk for author in authors]
        stop = threading.Event()
        copying = threading.Event()
        errors: list[BaseException] = []
        done = Tally[str]()
        lock = threading.Lock()

        def writer(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                try:
                    write_once(rng, author_pks)
                    outcome = "during copy" if copying.is_set() else "outside copy"
                except DatabaseError:  # a deadlock or unique race between writers
                    outcome = "retried"
                with lock:
                    done[outcome] += 1

        def relay_loop() -> None:
            while not stop.is_set():
                if relay.ship_once(limit=20).batches == 0:
                    time.sleep(0.005)

        replayer = Replayer(batch_size=40)
        threads = [in_thread(relay_loop, errors), in_thread(replayer.run, errors)]
        threads += [in_thread(lambda s=seed: writer(s), errors) for seed in range(WRITERS)]
        try:
            time.sleep(0.2)  # writers, relay and replay all under way
            copying.set()
            out = StringIO()
            call_command(
                "mirror_copy",
                "testapp.Counter",
                "testapp.Author",
                "--chunk-size",
                str(CHUNK),
                "--throttle",
                str(THROTTLE),
                "--json",
                stdout=out,
            )
            copying.clear()
            applied_while_copying = replayer.stats.applied
            time.sleep(0.2)
        finally:
            stop.set()
            replayer.stop = True
            for thread in threads:
                thread.join(60)
        assert not errors, errors
        assert done["during copy"] > 100, done
        assert applied_while_copying > 0, "replay applied nothing while the copy ran"

        reports = json.loads(out.getvalue())
        for report in reports:
            assert report["finished"], report
            assert report["copied"] > 0, report
            assert report["copied"] + report["skipped"] + report["clashed"] == report["read"]

        drain_and_replay()
        out = StringIO()
        call_command(  # raises CommandError (exit 1) if any row differs
            "mirror_verify",
            "testapp.Counter",
            "testapp.Author",
            "--recheck-delay",
            "0",
            "--json",
            stdout=out,
        )
        verified = json.loads(out.getvalue())
        assert [r["differences"] for r in verified] == [[], []]
        assert sum(r["rows"] for r in verified) == Counter.objects.count() + Author.objects.count()
        assert not DeadLetter.objects.exists(), list(DeadLetter.objects.values("reason"))
    assert_mirrored(Counter, Author)


def waiting_for_a_lock(cursor: Any) -> bool:
    """Whether a session on the cursor's database waits for a lock (another's)."""
    cursor.execute("SELECT pg_stat_clear_snapshot()")  # else fixed for the transaction
    cursor.execute(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return bool(cursor.fetchone()[0])


@both_databases
def test_copy_never_brings_back_a_row_replay_deletes_while_the_chunk_runs(postgres: None) -> None:
    """Replay deletes a row the target does not hold yet, which leaves only a tombstone,
    and its transaction stays open while a copy chunk holding the row (read before the
    delete) checks and inserts. The copy must wait for replay or find the tombstone:
    once both commit, the row is gone, as in the source."""
    with paused():
        counters = Counter.objects.bulk_create([Counter(name=f"c{i}", value=i) for i in range(10)])
    doomed = counters[4]
    config = conf.model_config(Counter)
    assert config is not None
    errors: list[BaseException] = []
    with transaction.atomic(using="new"), connections["new"].cursor() as cursor:
        # Replay's own apply: the tombstone claimed, the absent row's DELETE run.
        assert DatabaseTarget("new").apply([delete_event(doomed, 10**9)]).applied == 1
        copy = in_thread(lambda: Copier(config).run(restart=True), errors)
        deadline = time.monotonic() + 30
        while copy.is_alive() and not waiting_for_a_lock(cursor):
            assert time.monotonic() < deadline, "the copy neither finished nor waited"
            time.sleep(0.01)
    copy.join(30)
    assert not copy.is_alive() and not errors, errors
    copied = set(Counter.objects.using("new").values_list("pk", flat=True))
    assert copied == {c.pk for c in counters} - {doomed.pk}, "the deleted row came back"
    tombstone = RowVersion.objects.using("new").get(model="testapp.counter", pk_value=doomed.pk)
    assert (tombstone.version, tombstone.deleted) == (10**9, True)
