"""Invariant 2 as a property: for any interleaving of source writes, bulk copy (killed and
resumed), relay, and replay fed duplicated and reordered records, once everything drains
the target holds exactly what the source holds and ``mirror_verify`` finds nothing.

Rows written before capture was switched on (``paused()``) are what the copy exists for;
as in the runbook, such uncaptured writes all happen before capture, hence before the
first copy chunk.
"""

from __future__ import annotations

import json
import queue
import random
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from io import StringIO
from typing import Any

import pytest
from django.apps import apps
from django.core.management import call_command
from django.core.management.color import no_style
from django.db import connections, models, transaction
from django.db.models import F
from django.test import override_settings
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from django_mirror import paused
from django_mirror.config import conf
from django_mirror.core.events import pk_text
from django_mirror.models import CopyProgress, DeadLetter
from django_mirror.pipeline import relay
from django_mirror.pipeline.copy import Copier, CopyStats
from django_mirror.pipeline.replay import Replayer, ReplayStats
from django_mirror.streams import KinesisStream, get_stream
from django_mirror.targets import Target, get_target
from django_mirror.targets.base import CopyResult
from tests.conftest import BOTH, assert_mirrored, both_databases
from tests.faults import (
    DuplicateAndShuffle,
    ShardReads,
    hooked,
    mirror_settings,
    stream_records,
    unique_stream_name,
)
from tests.testapp.models import Author, Counter

#: Few names, so inserts, renames and re-inserts fight over Counter's unique ``name``.
NAMES = [f"n{i}" for i in range(6)]
MODELS: tuple[type[models.Model], ...] = (Counter, Author)

names = st.sampled_from(NAMES)
model_choice = st.sampled_from(MODELS)
picks = st.integers(min_value=0, max_value=1_000)


def reset_databases() -> None:
    """Each example starts from empty tables and fresh key sequences on both aliases, as
    Django's own flush leaves them (the test's flush runs only after the last example):
    the same steps then give the same keys, shards and interleavings, so a failure
    reproduces."""
    tables = [
        model._meta.db_table
        for app in ("testapp", "django_mirror")
        for model in apps.get_app_config(app).get_models(include_auto_created=True)
    ]
    for alias in BOTH:
        connection = connections[alias]
        present = set(connection.introspection.table_names())  # the router's choice
        statements = connection.ops.sql_flush(
            no_style(), [t for t in tables if t in present], reset_sequences=True
        )
        connection.ops.execute_sql_flush(statements)


def stop_after(count: int, owner: Any) -> Any:
    """A progress callback that asks ``owner`` to stop after ``count`` calls: a kill
    between two chunks (copy) or two batches (replay)."""
    calls = 0

    def progress(stats: CopyStats | ReplayStats) -> None:
        nonlocal calls
        calls += 1
        if calls >= count:
            owner.stop = True

    return progress


class Killed(Exception):
    """Ends a held copy between reading a chunk and writing it."""


class HeldCopy(Target):
    """``Copier`` of one model in a thread of its own, held between reading each chunk
    from the source and writing it to the target, so that other writes, relays and
    replays run in that gap: what makes a copied row stale in production. It passes
    chunks to the model's real target; ``kill`` ends it in the gap, like SIGKILL."""

    def __init__(self, model: type[models.Model], chunk_size: int, restart: bool) -> None:
        config = conf.model_config(model)
        assert config is not None
        self.target = get_target(config)
        self.orders: queue.Queue[str] = queue.Queue()
        self.reports: queue.Queue[str] = queue.Queue()
        self.copier = Copier(config, chunk_size=chunk_size, target=self)
        threading.Thread(target=self._run, args=(restart,), daemon=True).start()
        self.state = self._report()

    def _run(self, restart: bool) -> None:
        try:
            self.copier.run(restart=restart)
            self.reports.put("finished")
        except Killed:
            self.reports.put("killed")
        except BaseException as exc:  # reported to the test, not lost in the thread
            self.reports.put(f"failed: {exc!r}")
        finally:
            connections.close_all()  # this thread's connections only

    def _report(self) -> str:
        state = self.reports.get(timeout=60)
        assert not state.startswith("failed"), state
        return state

    def copy(self, model: type[models.Model], rows: Sequence[dict[str, Any]]) -> CopyResult:
        self.reports.put("holding")
        if self.orders.get() == "kill":
            raise Killed
        return self.target.copy(model, rows)

    @property
    def running(self) -> bool:
        return self.state == "holding"

    def land(self) -> None:
        """Write the chunk held, then read the next one (or finish)."""
        self.orders.put("land")
        self.state = self._report()

    def kill(self) -> None:
        self.orders.put("kill")
        self.state = self._report()


class Protocol(RuleBasedStateMachine):
    """The source DB is the model of truth; only the final state is asserted.

    ``TARGET`` None mirrors into the ``new`` database; a backend dict (its table name
    given a fresh prefix per example) mirrors into that store instead. Where the source
    is and how its writes are captured are the hooks below: ORM capture on ``default``
    here, PostgreSQL's log in ``tests/test_wal_convergence.py``.
    """

    TARGET: dict[str, Any] | None = None
    #: The target option that keeps one example's rows apart from the others'.
    SEPARATE_BY = "table_name"
    #: The models mirrored, copied and verified (this class's rules write ``MODELS``).
    MIRRORED: tuple[type[models.Model], ...] = MODELS

    def __init__(self) -> None:
        super().__init__()
        mirror = self.mirror_settings()
        if self.TARGET is not None:
            separate = f"{uuid.uuid4().hex[:8]}_{{model_name}}"
            options = {
                **self.TARGET.get("OPTIONS", {}),
                self.SEPARATE_BY: separate if self.SEPARATE_BY == "table_name" else separate[:8],
            }
            for model in self.MIRRORED:
                mirror["MODELS"][model._meta.label] = {
                    **mirror["MODELS"][model._meta.label],
                    "target": {**self.TARGET, "OPTIONS": options},
                }
        self.overridden = override_settings(DJANGO_MIRROR=mirror)
        self.overridden.enable()
        try:
            #: Where the app's ORM writes (and the rules read) the source's rows.
            self.source = conf.source_alias()
            self.reset()
            if self.TARGET is not None:
                for model in self.MIRRORED:
                    get_target(conf.model_config(model)).setup([model])  # type: ignore[arg-type]
            self.stream: KinesisStream = get_stream()  # type: ignore[assignment]
            self.stream.create()
        except BaseException:  # no teardown follows: the next test gets its own settings
            self.overridden.disable()
            raise
        self.deleted: dict[type[models.Model], list[tuple[int, str]]] = {m: [] for m in MODELS}
        self.held: dict[type[models.Model], HeldCopy] = {}
        # One per example, so replays get records the shard delivered to earlier ones.
        self.shuffle = DuplicateAndShuffle(seed=0, rate=0.5)

    # --- where the source is and how it is captured (what a subclass changes) -----------

    def mirror_settings(self) -> dict[str, Any]:
        """The example's ``DJANGO_MIRROR``: a stream of its own, two shards."""
        return mirror_settings(stream_name=unique_stream_name(), shard_count=2)

    def reset(self) -> None:
        """Empty stores before the example (the example's settings are in force)."""
        reset_databases()

    @contextmanager
    def before_capture(self) -> Iterator[None]:
        """Writes in the block happen before capture is switched on."""
        with paused():
            yield

    def capture_all(self) -> None:
        """Capture every write made so far: ORM capture stored each with its write."""

    def assert_target_holds_source(self) -> None:
        """Row for row, beyond what ``mirror_verify`` compares."""
        if self.TARGET is None:
            assert_mirrored(*self.MIRRORED)

    def db(self, model: type[models.Model]) -> models.QuerySet[Any]:
        """The model's rows on the source, where the app's ORM writes them."""
        return model.objects.using(self.source)

    # --- helpers ------------------------------------------------------------------------

    def _pick(self, model: type[models.Model], index: int) -> models.Model | None:
        existing = list(self.db(model).order_by("pk"))
        return existing[index % len(existing)] if existing else None

    def _free(self, name: str) -> bool:
        return not self.db(Counter).filter(name=name).exists()

    # --- writes made before capture was switched on ---------------------------------------

    @initialize(
        counters=st.dictionaries(names, st.integers(-5, 5), max_size=len(NAMES)),
        authors=st.lists(st.text("abc", min_size=1, max_size=3), max_size=6),
        gaps=st.sets(st.integers(0, 11), max_size=4),
    )
    def preexisting_rows(
        self, counters: dict[str, int], authors: list[str], gaps: set[int]
    ) -> None:
        """Rows from before capture: only the copy can bring them over. Some are deleted
        again, leaving holes in the keys the copy pages through."""
        with self.before_capture():
            self.db(Counter).bulk_create([Counter(name=n, value=v) for n, v in counters.items()])
            self.db(Author).bulk_create([Author(name=n) for n in authors])
            for i, row in enumerate(
                [*self.db(Counter).order_by("pk"), *self.db(Author).order_by("pk")]
            ):
                if i in gaps:
                    row.delete()

    # --- captured writes ----------------------------------------------------------------

    @rule(batch=st.lists(names, min_size=1, max_size=3, unique=True), value=st.integers(-5, 5))
    def insert_counters(self, batch: list[str], value: int) -> None:
        free = [n for n in batch if self._free(n)]
        if len(free) == 1:
            self.db(Counter).create(name=free[0], value=value)
        else:
            self.db(Counter).bulk_create([Counter(name=n, value=value) for n in free])

    @rule(name=names, other=names, delta=st.integers(-3, 3), how=st.integers(0, 2))
    def update_counter(self, name: str, other: str, delta: int, how: int) -> None:
        """F() updates through the queryset or the instance, or a rename: that hands a
        unique value from one row to another, a clash replay and copy must sort out when
        rows arrive out of order."""
        if how == 0:
            self.db(Counter).filter(name=name).update(value=F("value") + delta)
        elif how == 1:
            counter = self.db(Counter).filter(name=name).first()
            if counter is not None:
                counter.value = F("value") * 2 + delta
                counter.save(update_fields=["value"])
        elif self._free(other):
            self.db(Counter).filter(name=name).update(name=other)

    @rule(index=picks, name=st.text("xyz", min_size=1, max_size=3))
    def write_author(self, index: int, name: str) -> None:
        author = self._pick(Author, index)
        if author is None or index % 3 == 0:
            self.db(Author).create(name=name)
        else:
            author.name = name
            author.save()

    @rule(model=model_choice, index=picks, on_instance=st.booleans())
    def delete_row(self, model: type[models.Model], index: int, on_instance: bool) -> None:
        row = self._pick(model, index)
        if row is None:
            return
        self.deleted[model].append((row.pk, row.name))
        if on_instance:
            row.delete()
        else:
            self.db(model).filter(pk=row.pk).delete()

    @precondition(lambda self: any(self.deleted.values()))
    @rule(model=model_choice, index=picks, fallback=names)
    def reinsert_same_pk(self, model: type[models.Model], index: int, fallback: str) -> None:
        """A row deleted earlier comes back under its old primary key (and name, when
        still free): the tombstone must not hide it, nor the old row resurface."""
        gone = [
            (pk, n) for pk, n in self.deleted[model] if not self.db(model).filter(pk=pk).exists()
        ]
        if not gone:
            return
        pk, name = gone[index % len(gone)]
        if model is Author:
            self.db(Author).create(pk=pk, name=name)
            return
        name = name if self._free(name) else fallback
        if self._free(name):
            self.db(Counter).create(pk=pk, name=name, value=-pk)

    @rule(name=names)
    def rolled_back_write(self, name: str) -> None:
        """Nothing invented: a write rolled back leaves no event behind."""
        with transaction.atomic(using=self.source):
            self.db(Counter).filter(name=name).delete()
            self.db(Author).create(name="never")
            transaction.set_rollback(True, using=self.source)

    # --- copy -----------------------------------------------------------------------------

    def _running(self) -> list[HeldCopy]:
        return [held for held in self.held.values() if held.running]

    @rule(model=model_choice, chunk_size=st.integers(1, 4), restart=st.booleans())
    def copy_step(self, model: type[models.Model], chunk_size: int, restart: bool) -> None:
        """The model's copy writes the chunk it holds and reads the next one; with none
        running, one starts (resuming from the checkpoint, unless ``restart``) and reads
        its first chunk. Whatever other rules run between the read and the write of a
        chunk is what a slow copy meets in production: the rows it holds go stale."""
        held = self.held.get(model)
        if held is not None and held.running:
            held.land()
        else:
            self.held[model] = HeldCopy(model, chunk_size, restart)

    @precondition(lambda self: bool(self._running()))
    @rule(data=st.data(), index=picks, lose_checkpoint=st.booleans())
    def copy_killed(self, data: st.DataObject, index: int, lose_checkpoint: bool) -> None:
        """SIGKILL holding a chunk it read; or, with ``lose_checkpoint``, after writing
        chunks but before checkpointing them, so the next run copies them again."""
        held = data.draw(st.sampled_from(self._running()))
        held.kill()
        model = held.copier.model
        progress = CopyProgress.objects.using(self.source)
        state = progress.filter(model=model._meta.label_lower).first()
        if not lose_checkpoint or state is None or not state.last_pk:
            return
        pk = model._meta.pk.to_python(state.last_pk)
        earlier = list(self.db(model).filter(pk__lt=pk).order_by("pk").values_list("pk", flat=True))
        state.last_pk = pk_text(earlier[index % len(earlier)]) if earlier and index % 3 else ""
        state.save()

    # --- relay and replay ---------------------------------------------------------------

    @rule(
        relay_limit=st.integers(0, 3),
        batches=st.integers(1, 4),
        batch_size=st.integers(1, 5),
        shuffle=st.booleans(),
    )
    def replay_batches(
        self, relay_limit: int, batches: int, batch_size: int, shuffle: bool
    ) -> None:
        """Relay ships some (0: none, 3: all) of the outbox; then a replay process stops
        after a few batches, its reads possibly carrying duplicated, redelivered and
        shuffled records."""
        if relay_limit == 3:
            relay.drain()
        elif relay_limit:
            relay.ship_once(limit=relay_limit)
        replayer = Replayer(batch_size=batch_size, progress_every=0)
        replayer.progress = stop_after(batches, replayer)
        with hooked(self.stream.client, *ShardReads(*([self.shuffle] if shuffle else [])).hooks()):
            replayer.run()

    @rule(seed=st.integers(0, 2**16), size=st.integers(1, 12))
    def replay_killed_before_checkpoint(self, seed: int, size: int) -> None:
        """Records applied in any order, some twice, by a replay killed before its
        checkpoint: the next replay applies them all again."""
        records = [r for shard in stream_records(self.stream).values() for r in shard]
        if records:
            rng = random.Random(seed)
            Replayer().apply_records([rng.choice(records) for _ in range(size)], "shuffled")

    # --- the end ----------------------------------------------------------------------

    def teardown(self) -> None:
        """Capture what is not yet, drain, kill the copies still running and finish them
        in a new run, replay until caught up: then source == target."""
        try:
            self.capture_all()
            relay.drain()
            assert relay.backlog() == 0
            for held in self._running():
                held.kill()  # the copies still running die; new ones resume them
            for model in self.MIRRORED:
                config = conf.model_config(model)
                assert config is not None
                assert Copier(config, chunk_size=3).run().finished
            Replayer(batch_size=7).run(until_caught_up=True)
            out = StringIO()
            call_command(
                "mirror_verify",
                *(m._meta.label for m in self.MIRRORED),
                "--json",
                "--recheck-delay",
                "0",
                "--chunk-size",
                "3",
                stdout=out,
            )  # raises CommandError (exit 1) on any difference
            reports = json.loads(out.getvalue())
            # Each model verified (with its many-to-many tables), none differing.
            assert {m._meta.label for m in self.MIRRORED} <= {r["model"] for r in reports}
            assert [r for r in reports if r["differences"]] == []
            self.assert_target_holds_source()
            dead = DeadLetter.objects.using(self.source)
            assert not dead.exists(), list(dead.values("reason"))
        finally:
            for held in self.held.values():
                if held.running:  # the example failed with a copy held: end its thread
                    held.orders.put("kill")
            self.overridden.disable()


class DynamoDBProtocol(Protocol):
    TARGET = {"BACKEND": "django_mirror.targets.DynamoDBTarget", "OPTIONS": {"base_delay": 0.001}}


class CacheProtocol(Protocol):
    TARGET = {"BACKEND": "django_mirror.targets.CacheTarget", "OPTIONS": {"cache": "mirror"}}
    SEPARATE_BY = "key_prefix"


def run_protocol(protocol: type[Protocol], examples: int) -> None:
    """Run ``protocol`` for ``examples`` sequences of up to 40 steps."""
    run_state_machine_as_test(
        protocol,
        settings=settings(
            max_examples=examples,
            stateful_step_count=40,
            deadline=None,
            # Each step writes to two databases and a stream: shrinking would outlast the
            # test's timeout, so a failure prints its whole (short) sequence of steps.
            phases=[Phase.explicit, Phase.reuse, Phase.generate],
            suppress_health_check=list(HealthCheck),
        ),
    )


@both_databases
@pytest.mark.parametrize(
    ("protocol", "examples"),
    [(Protocol, 30), (DynamoDBProtocol, 12), (CacheProtocol, 12)],
    ids=["database", "dynamodb", "cache"],
)
def test_copy_relay_and_replay_converge_for_any_interleaving(
    aws: None, protocol: type[Protocol], examples: int
) -> None:
    run_protocol(protocol, examples)
