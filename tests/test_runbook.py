"""The whole runbook of docs/runbook.md, end to end, while the service keeps writing:
capture, copy under writers, replay until caught up, verify, mirror with shadow reads,
promote, roll back, promote again, with verify finding nothing after each step.

The service is shop-like: authors with books (CASCADE) they may also edit (SET_NULL),
tags (M2M), shelves (a through model) and typed rows (SET_NULL), all one group that
moves as one, against targets with real foreign-key constraints; parents are deleted
with their children while the group is mirrored live and while it is promoted."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import StringIO
from unittest import mock

from django.conf import settings
from django.core.management import call_command
from django.db import DatabaseError, connections, models, transaction
from django.db.models import F
from django.test import override_settings

from django_mirror import paused
from django_mirror.config import conf
from django_mirror.models import MismatchRecord, OutboxBatch
from django_mirror.pipeline import relay
from django_mirror.pipeline.replay import Replayer
from django_mirror.shadow import get_pool, shadow_reads
from tests.conftest import SHOP, both_databases, drain_and_replay, in_thread
from tests.testapp.models import AllTypes, Author, Book, Counter, Shelf, ShelfBook, Tag

#: Author's group and a model tied to none.
MOVED = (*SHOP, "testapp.Counter")
ROWS = 150
#: What the service did, for the figures the test prints.
FIGURES: dict[str, int] = {}


def runbook_settings() -> override_settings:
    """Author and Counter every read shadowed once mirrored; the rest as the tests have it."""
    models = {
        label: {**opts, "shadow_read_rate": 1.0} if label in MOVED else opts
        for label, opts in settings.DJANGO_MIRROR["MODELS"].items()
    }
    return override_settings(
        DJANGO_MIRROR={
            **settings.DJANGO_MIRROR,
            "MODELS": models,
            "SHADOW": {"RECHECK_DELAY": 0.2, "TIMEOUT": 5.0},
            "PHASES": {"MAX_REPLAY_LAG": 5.0},
        }
    )


def _some(model: type[models.Model], using: str) -> models.Model | None:
    return model.objects.using(using).order_by("?").first()


def write_once(rng: random.Random) -> None:
    """One transaction of the service, on whichever store is primary right now."""
    using = conf.model_config(Counter).primary_alias  # type: ignore[union-attr]
    shop = conf.model_config(Author).primary_alias  # type: ignore[union-attr]
    name = f"c{rng.randrange(ROWS)}"
    action = rng.random()
    with transaction.atomic(using=shop if action >= 0.5 else using):
        if action < 0.2:
            Counter.objects.filter(name=name).update(value=F("value") + 1)
        elif action < 0.3:
            Counter.objects.filter(name=name).delete()
        elif action < 0.5:
            Counter.objects.get_or_create(name=name, defaults={"value": -1})
        elif action < 0.6:
            Author.objects.create(name=f"new{rng.random():.6f}")
        elif action < 0.68:
            author = _some(Author, shop)
            if author is not None:
                author.name = f"renamed{rng.randrange(1000)}"
                author.save()
        elif action < 0.8:
            author, editor = _some(Author, shop), _some(Author, shop)
            if author is not None:
                book = Book.objects.create(author=author, editor=editor, title="b")
                book.tags.add(*Tag.objects.order_by("?")[: rng.randrange(3)])
                shelf = _some(Shelf, shop)
                if shelf is not None:
                    ShelfBook.objects.create(shelf=shelf, book=book, position=rng.randrange(9))
                AllTypes.objects.create(author=author, big=rng.randrange(10**12))
        elif action < 0.86:
            author = _some(Author, shop)  # its books, their shelf and tag rows cascade;
            if author is not None:  # books it edits and typed rows are set to NULL
                author.delete()
                FIGURES["parents deleted"] = FIGURES.get("parents deleted", 0) + 1
        elif action < 0.9:
            Book.objects.filter(pk__in=Book.objects.order_by("?").values("pk")[:2]).delete()
        elif action < 0.95:
            book = _some(Book, shop)
            if book is not None:
                book.tags.set(Tag.objects.order_by("?")[: rng.randrange(4)])
        else:
            tag = _some(Tag, shop)
            if tag is not None:
                tag.delete()
                Tag.objects.get_or_create(name=f"t{rng.randrange(40)}")
    FIGURES["transactions"] = FIGURES.get("transactions", 0) + 1


def read_once(rng: random.Random) -> None:
    """Reads of the service, shadowed on the other store."""
    with shadow_reads():
        Counter.objects.filter(name=f"c{rng.randrange(ROWS)}").first()
        list(Author.objects.order_by("pk")[:20])
        Counter.objects.count()


@contextmanager
def service(threads: int) -> Iterator[None]:
    """Writers and readers, with relay and replay running behind them, for the block."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop(step: Callable[[random.Random], None], seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            try:
                step(rng)
            except DatabaseError:  # deadlocks, unique races, SQLite's lock: a retry
                time.sleep(0.005)
            # A service's pace, not a tight loop: on a loaded machine a tight loop's
            # backlog grows as fast as the steps under test slow down.
            time.sleep(0.002)

    def relay_loop() -> None:
        while not stop.is_set():
            try:
                if relay.drain(max_rounds=1).batches == 0:
                    time.sleep(0.01)
            except DatabaseError:
                time.sleep(0.01)

    replayer = Replayer(batch_size=50)
    workers = [in_thread(relay_loop, errors), in_thread(replayer.run, errors)]
    workers += [in_thread(lambda s=s: loop(write_once, s), errors) for s in range(threads)]
    workers.append(in_thread(lambda: loop(read_once, 99), errors))
    try:
        yield
        time.sleep(0.6)
    finally:
        stop.set()
        replayer.stop = True
        for worker in workers:
            worker.join(60)
    assert not errors, errors


def verify_clean() -> None:
    out = StringIO()
    call_command("mirror_verify", *MOVED, "--recheck-delay", "0", stdout=out)  # exit 1 raises
    assert " 0 differ" in out.getvalue(), out.getvalue()


def settle() -> None:
    """Everything captured shipped and applied, every shadow read compared."""
    drain_and_replay()
    assert get_pool().wait_idle(60)
    drain_and_replay()


def move(phase: str) -> None:
    """The group and Counter, as the runbook says: ``mirror_phase --group``."""
    for label in ("testapp.Author", "testapp.Counter"):
        call_command(
            "mirror_phase", "--group", label, phase, "--reason", f"step to {phase}", verbosity=0
        )
    assert all(conf.config_for_label(label).phase == phase for label in MOVED)  # type: ignore[union-attr]


def write_mismatches() -> int:
    """Live writes the other store refused, as recorded (healed or not)."""
    return MismatchRecord.objects.filter(kind="write").count()


@both_databases
def test_the_runbook_end_to_end_while_the_service_writes(kinesis):
    threads = 3 if connections["default"].vendor != "sqlite" else 1
    FIGURES.clear()
    with runbook_settings():
        with paused():  # the rows that exist before django-mirror is switched on
            Counter.objects.bulk_create([Counter(name=f"c{i}", value=i) for i in range(ROWS)])
            Author.objects.bulk_create([Author(name=f"a{i}") for i in range(ROWS // 3)])
            Tag.objects.bulk_create([Tag(name=f"t{i}") for i in range(20)])
            Shelf.objects.bulk_create([Shelf(name=f"s{i}") for i in range(5)])
            authors = list(Author.objects.all())
            Book.objects.bulk_create(
                [Book(author=a, editor=authors[-1 - i], title="old") for i, a in enumerate(authors)]
            )

        # 1-3. capture; copy while the service writes; replay until caught up.
        with service(threads):
            call_command("mirror_copy", *MOVED, "--chunk-size", "25", stdout=StringIO())
        settle()
        verify_clean()

        # 5. mirror: live writes and shadow reads; nothing may be confirmed as a mismatch.
        move("mirror")
        with service(threads):
            pass
        settle()
        assert not MismatchRecord.objects.filter(kind="read", status="confirmed").exists()
        verify_clean()

        # 6. promote: writes go to the target first and come back to the old store.
        move("promoted")
        with mock.patch.object(relay.shipper, "kick"):  # looked at before it is shipped
            written = Author.objects.create(name="written after promotion")
            assert OutboxBatch.objects.using("new").filter(model="testapp.Author").exists()
            assert not OutboxBatch.objects.using("default").exists()  # captured where written
        assert Author.objects.using("default").filter(pk=written.pk).exists()
        with service(threads):
            pass
        settle()
        verify_clean()
        # (The service may have renamed or deleted it since: both stores must agree.)
        on_old = Author.objects.using("default").filter(pk=written.pk).exists()
        assert Author.objects.using("new").filter(pk=written.pk).exists() == on_old

        # Roll back to mirror: nothing written while promoted is lost.
        move("mirror")
        with service(threads):
            pass
        settle()
        verify_clean()

        # And promote again.
        move("promoted")
        with service(threads):
            pass
        settle()
        verify_clean()
        assert not MismatchRecord.objects.filter(kind="read", status="confirmed").exists()
        assert Counter.objects.using("new").count() == Counter.objects.using("default").count()
    refused = write_mismatches()
    still_open = MismatchRecord.objects.filter(kind="write").exclude(status="resolved").count()
    print(
        f"\nrunbook figures ({connections['default'].vendor}, {threads} writers): "
        f"{FIGURES['transactions']} transactions, {FIGURES.get('parents deleted', 0)} authors "
        f"deleted with their books' cascades; {Book.objects.count()} books, "
        f"{ShelfBook.objects.count()} shelf rows at the end; {refused} live writes refused "
        f"by the other store, {still_open} still open after replay; mirror_verify found 0 "
        f"differences after each of 5 steps"
    )
    assert still_open == 0
