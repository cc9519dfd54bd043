"""Installing django-mirror cannot hurt the service it runs in.

The app's writes go on while the stream hangs or fails, with Django's default SQLite
options and the relay thread shipping after every commit; no database lock is held
while the stream is called; our commit hooks never drop the app's; capture follows the
database Django writes to; the background threads run from start-up, once per
process, and again in a forked worker.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import pytest
from django.conf import settings
from django.db import connections, transaction
from django.db.models import F
from django.test import Client, override_settings

from django_mirror import runtime
from django_mirror.capture import record
from django_mirror.config import conf
from django_mirror.core import failures
from django_mirror.models import MirrorState, OutboxBatch
from django_mirror.pipeline import relay
from django_mirror.streams import KinesisStream
from tests.conftest import (
    assert_mirrored,
    both_databases,
    drain_and_replay,
    in_thread,
    mirroring,
    target_down,
)
from tests.faults import FailCalls, error_response, hooked
from tests.testapp.models import Author, Book, Counter, Tag

MODELS = (Author, Book, Counter, Tag, Book.tags.through)


@contextmanager
def djangos_default_options(alias: str = "default") -> Iterator[None]:
    """New connections to ``alias`` made with the OPTIONS a new project has: on SQLite,
    DEFERRED transactions and a 5 s timeout (the tests' settings ask for more)."""
    settings_dict = connections.settings[alias]
    saved = settings_dict.get("OPTIONS")
    if settings_dict["ENGINE"].endswith("sqlite3"):
        settings_dict["OPTIONS"] = {}
    connections[alias].close()
    try:
        yield
    finally:
        connections[alias].close()
        settings_dict["OPTIONS"] = saved


class Hang:
    """A ``before-call`` handler: each PutRecords waits until ``release`` is set, then
    fails (as a timed-out request would)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.calls = 0

    def __call__(self, **kwargs: Any) -> Any:
        self.calls += 1
        self.entered.set()
        self.release.wait(120)
        return error_response("InternalFailure", "the stream hung", 500)

    def hooks(self) -> list[tuple[str, Callable[..., Any]]]:
        return [("before-call.kinesis.PutRecords", self)]


# --- the app's writes while the stream hangs, then fails --------------------------------------


_names = itertools.count()


def _some(model: type, rng: random.Random) -> Any:
    return model.objects.order_by("?").first()


def create_author(rng: random.Random) -> None:
    Author.objects.create(name=f"a{next(_names)}")


def rename_author(rng: random.Random) -> None:
    author = _some(Author, rng)
    if author is not None:
        author.name = f"r{next(_names)}"
        author.save()


def delete_author(rng: random.Random) -> None:
    """Cascades to its books, sets editors to NULL, fast-deletes M2M rows."""
    if Author.objects.count() > 5:
        _some(Author, rng).delete()


def create_book(rng: random.Random) -> None:
    author, editor = _some(Author, rng), _some(Author, rng)
    if author is not None:
        Book.objects.create(author=author, editor=editor, title=f"b{next(_names)}")


def untag_book(rng: random.Random) -> None:
    book = _some(Book, rng)
    if book is not None:
        book.tags.remove(*book.tags.all()[:1]) if rng.random() < 0.7 else book.tags.clear()


def tag_book(rng: random.Random) -> None:
    """Django's ``add()`` reads which rows exist before it writes, in its transaction."""
    book, tag = _some(Book, rng), _some(Tag, rng)
    if book is not None and tag is not None:
        book.tags.add(tag)


def count_up(rng: random.Random) -> None:
    Counter.objects.filter(name=f"c{rng.randrange(20)}").update(value=F("value") + 1)


def upsert_counter(rng: random.Random) -> None:
    Counter.objects.update_or_create(name=f"c{rng.randrange(20)}", defaults={"value": 1})


def bulk_counters(rng: random.Random) -> None:
    Counter.objects.bulk_create([Counter(name=f"k{next(_names)}") for _ in range(5)])
    counters = list(Counter.objects.order_by("?")[:5])
    for counter in counters:
        counter.value += 10
    Counter.objects.bulk_update(counters, ["value"])


def drop_counters(rng: random.Random) -> None:
    Counter.objects.filter(name__startswith="k", value__gt=rng.randrange(20)).delete()


def writing_first(rng: random.Random) -> None:
    """The app's own transaction, writing before it reads."""
    with transaction.atomic():
        author = Author.objects.create(name=f"t{next(_names)}")
        Book.objects.create(author=author, title=f"t{next(_names)}")
        Counter.objects.filter(name=f"c{rng.randrange(20)}").update(value=0)


def reading_first(rng: random.Random) -> None:
    """The app's own transaction, reading before it writes."""
    with transaction.atomic():
        if not Counter.objects.filter(name=f"c{rng.randrange(20)}").exists():
            Counter.objects.create(name=f"c{rng.randrange(20)}-{next(_names)}")
        Author.objects.create(name=f"t{next(_names)}")


#: Writes whose transaction django-mirror opens, or that write first.
OURS = [
    create_author,
    rename_author,
    delete_author,
    create_book,
    untag_book,
    count_up,
    upsert_counter,
    bulk_counters,
    drop_counters,
    writing_first,
]
#: Transactions that read before they write, opened by the app or by Django.
READING_FIRST = [tag_book, reading_first]


class Service:
    """One thread of the app writing through every write path, counting what it did and
    every error it met."""

    def __init__(self, seed: int, writes: list[Callable[[random.Random], None]]) -> None:
        self.rng = random.Random(seed)
        self.writes = writes
        self.stop = threading.Event()
        self.done: collections.Counter[str] = collections.Counter()
        self.errors: list[str] = []
        self.thread_errors: list[BaseException] = []
        self.thread: threading.Thread | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            write = self.rng.choice(self.writes)
            try:
                write(self.rng)
            except Exception as exc:
                self.errors.append(f"{write.__name__}: {type(exc).__name__}: {exc}")
            else:
                self.done[write.__name__] += 1

    def __enter__(self) -> Service:
        self.thread = in_thread(self.run, self.thread_errors)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(60)
        assert not self.thread_errors


HANG_SECONDS = 15.0
FAIL_SECONDS = 15.0


@both_databases
@pytest.mark.parametrize("options", ["recommended", "django-default"])
def test_every_app_write_succeeds_while_the_stream_hangs_then_fails(
    kinesis: KinesisStream, options: str
) -> None:
    """The default relay mode (a thread ships after each commit) against a stream that
    hangs for 15 s, then refuses every request for 15 s: not one write of the app fails,
    and once the stream is back the target holds exactly what the source holds.

    With the SQLite options check W006 asks for, that holds for every transaction. With
    Django's defaults it holds for every write whose transaction django-mirror opens or
    that writes first; a transaction that reads first (Django's own M2M ``add()``
    among them) can meet "database is locked" from any other writer, ours included:
    that is what W006 warns of.
    """
    sqlite = connections["default"].vendor == "sqlite"
    if options == "django-default" and not sqlite:
        pytest.skip("the defaults of PostgreSQL and MariaDB are what the tests run with")
    assert conf.get_settings().relay.on_commit == "thread"  # the default
    writes = OURS if options == "django-default" else OURS + READING_FIRST
    Tag.objects.bulk_create([Tag(name=f"t{i}") for i in range(5)])
    hang, refuse = Hang(), FailCalls("PutRecords", "ServiceUnavailable")
    with (
        djangos_default_options() if options == "django-default" else nullcontext(),
        Service(seed=7, writes=writes) as service,
    ):
        with hooked(kinesis.client, *hang.hooks()):
            assert hang.entered.wait(10), "the relay thread never called the stream"
            time.sleep(HANG_SECONDS)
            during_hang = sum(service.done.values())
            hang.release.set()
        with hooked(kinesis.client, *refuse.hooks()):
            time.sleep(FAIL_SECONDS)
    assert service.errors == []
    assert during_hang > 20, "the app's writes waited for the stream"
    assert set(service.done) == {write.__name__ for write in writes}, service.done
    assert refuse.failed > 0
    drain_and_replay()
    assert_mirrored(*MODELS)


@both_databases
def test_no_database_lock_is_held_while_the_stream_is_called(kinesis: KinesisStream) -> None:
    """While the relay thread's PutRecords hangs, another connection takes the outbox rows
    (on SQLite: the whole database's write lock) at once."""
    hang = Hang()
    with hooked(kinesis.client, *hang.hooks()):
        Author.objects.create(name="shipped by the thread")
        assert hang.entered.wait(10), "the relay thread never called the stream"
        try:
            connection = connections["default"]
            if connection.vendor == "sqlite":
                other = sqlite3.connect(connection.settings_dict["NAME"], timeout=0.5)
                try:
                    other.execute("BEGIN IMMEDIATE")  # "database is locked" if held
                    other.execute("UPDATE django_mirror_outboxbatch SET attempts = attempts")
                    other.rollback()
                finally:
                    other.close()
            else:
                with transaction.atomic():
                    locked = OutboxBatch.objects.select_for_update(nowait=True)
                    assert len(locked) == 1  # raises if the relay held the row
        finally:
            hang.release.set()
    drain_and_replay()
    assert_mirrored(Author)


@both_databases
def test_repeated_shipping_failures_are_warned_about_and_counted(
    aws: None, statsd: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No stream: each commit's shipping fails; the second failure in a row is a WARNING,
    and every one is in the ``internal_errors.relay`` counter."""
    # One WARNING a minute at most; an earlier test may have had this minute's.
    monkeypatch.setattr(failures.RepeatedFailures, "WARN_EVERY", 0.0)
    with caplog.at_level(logging.DEBUG, logger="django_mirror"):
        for name in ("one", "two", "three"):
            Author.objects.create(name=name)
            assert relay.shipper.wait_idle(30)  # the relay thread tried after this commit
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("shipping after commit failed" in r.getMessage() for r in warnings), warnings
    assert statsd.total(statsd.lines(), "django_mirror.internal_errors.relay") >= 2
    assert relay.backlog() == 3  # the outbox keeps them all


# --- commit hooks ----------------------------------------------------------------------------


@both_databases
def test_a_failing_commit_hook_of_ours_never_drops_the_apps_later_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Our after-commit callback is registered by the first captured write, before the
    app's; when it fails, the app's still runs, and the failure is counted."""

    def broken(using: str) -> None:
        raise RuntimeError("injected: after-commit shipping broke")

    monkeypatch.setattr(record, "committed_hooks", [broken])  # the relay's place
    ran: list[str] = []
    before = failures.count
    with transaction.atomic():
        Author.objects.create(name="first")
        transaction.on_commit(lambda: ran.append("app"))
    assert ran == ["app"]
    assert failures.count > before
    Author.objects.create(name="autocommit")  # on_commit outside a transaction runs at once
    assert Author.objects.filter(name="autocommit").exists()


@both_databases
def test_a_failing_live_apply_never_drops_the_apps_later_commit_hooks() -> None:
    """In phase mirror our callback applies the write to the target; with the target
    down it fails, and the app's callback registered after it still runs."""
    ran: list[str] = []
    with mirroring({"testapp.Author": {}}), target_down("new"):
        with transaction.atomic():
            Author.objects.create(name="left to replay")
            transaction.on_commit(lambda: ran.append("app"))
    assert ran == ["app"]
    assert Author.objects.filter(name="left to replay").exists()


# --- capture follows the write database ------------------------------------------------------

REPLICA = ["default", "new", "replica"]


@pytest.mark.django_db(databases=REPLICA, transaction=True)
def test_writes_routed_to_the_primary_are_captured_whatever_reads_use(
    kinesis: KinesisStream, relay_off: None
) -> None:
    """With the primary/replica router of Django's documentation, reads go to a replica
    and writes to the primary: every write path decides on the alias it writes to."""
    routers = ["django_mirror.router.MirrorRouter", "tests.routers.PrimaryReplicaRouter"]
    with override_settings(DATABASE_ROUTERS=routers):
        assert Author.objects.all().db == "replica"
        Author.objects.bulk_create([Author(name=f"a{i}") for i in range(3)])
        Author.objects.filter(name="a0").update(name="updated")
        authors = list(Author.objects.all())
        for author in authors:
            author.name += "!"
        Author.objects.bulk_update(authors, ["name"])
        Author.objects.filter(name="a1!").delete()
        Counter.objects.update_or_create(name="c", defaults={"value": 2})
    captured = collections.Counter(
        label for label in OutboxBatch.objects.values_list("model", flat=True)
    )
    assert captured == {"testapp.Author": 4, "testapp.Counter": 1}
    drain_and_replay()
    assert_mirrored(Author, Counter)
    assert sorted(Author.objects.using("new").values_list("name", flat=True)) == [
        "a2!",
        "updated!",
    ]


# --- background threads ----------------------------------------------------------------------

THREADS = {
    "django-mirror-relay",
    "django-mirror-phases",
    "django-mirror-stats",
    "django-mirror-statsd",
    "django-mirror-recheck",
}


def test_the_background_threads_run_from_start_up() -> None:
    """apps.py started them when Django was set up, before any write or request."""
    names = {thread.name for thread in runtime.threads()}
    assert names >= THREADS, names
    assert any(name.startswith("django-mirror-shadow-") for name in names)


@both_databases
def test_no_request_waits_for_a_thread_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request that writes (the relay thread ships after it), counts (the stats
    writer, statsd) and is shadowed (the pool) starts no thread."""
    with mirroring({"testapp.Author": {"shadow_read_rate": 1.0}}):
        started: list[str] = []
        start = threading.Thread.start

        def recording_start(thread: threading.Thread) -> None:
            started.append(thread.name)
            start(thread)

        monkeypatch.setattr(threading.Thread, "start", recording_start)
        client = Client()
        assert client.post("/authors/", {"name": "ada"}).status_code == 200
        assert client.get("/authors/").json()["names"] == ["ada"]
        monkeypatch.undo()
    assert started == []


@both_databases
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_worker_follows_phase_changes() -> None:
    """A gunicorn ``--preload`` worker is forked from a process whose threads it does not
    inherit: it starts its own and sees a phase change made after the fork."""
    mirror_settings = {**settings.DJANGO_MIRROR, "PHASES": {"REFRESH": 0.2}}
    with override_settings(DJANGO_MIRROR=mirror_settings):
        assert conf.model_config(Author).phase == "capture"  # type: ignore[union-attr]
        readable, writable = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            try:
                deadline = time.monotonic() + 20
                phase = conf.model_config(Author).phase  # type: ignore[union-attr]
                while phase != "mirror" and time.monotonic() < deadline:
                    time.sleep(0.05)
                    phase = conf.model_config(Author).phase  # type: ignore[union-attr]
                names = sorted(thread.name for thread in runtime.threads())
                os.write(writable, json.dumps({"phase": phase, "threads": names}).encode())
            finally:
                os._exit(0)
        os.close(writable)
        MirrorState.objects.create(model="testapp.Author", phase="mirror", generation=1)
        with os.fdopen(readable, "rb") as pipe:
            seen = json.loads(pipe.read() or b"{}")
        os.waitpid(pid, 0)
    assert seen.get("phase") == "mirror", seen
    assert set(seen["threads"]) >= THREADS
