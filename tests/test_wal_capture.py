"""WAL capture (``CAPTURE = "wal"``, ``mirror_capture``) on a PostgreSQL 15 cluster the
tests start themselves with ``wal_level = logical``: writes the ORM never sees are
captured from the log as the ORM's own events, replayed into a target that ends equal.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg
import pytest
from django.conf import settings
from django.core.checks import run_checks
from django.core.management import CommandError, call_command
from django.db import connections, migrations, transaction
from django.db.migrations.state import ProjectState
from django.test import override_settings

from django_mirror.capture.wal import slot
from django_mirror.checks import check_capture
from django_mirror.config import conf
from django_mirror.core.events import Event
from django_mirror.models import OutboxBatch
from django_mirror.observability import stats
from django_mirror.pipeline import relay
from django_mirror.streams import get_stream
from django_mirror.targets import database_target
from tests import wal_cluster
from tests.conftest import drain_and_replay, rows
from tests.faults import stream_records
from tests.testapp.models import AllTypes, Author, Book, Tag
from tests.wal_cluster import SOURCE, TARGET

REASON = wal_cluster.unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"WAL capture: {REASON}")

BookTags = Book.tags.through
MODELS = (Author, Tag, Book, BookTags, AllTypes)


@pytest.fixture(scope="module")
def cluster(django_db_setup: None, django_db_blocker: Any) -> Iterator[wal_cluster.Cluster]:
    """The cluster, its two databases as aliases of this process, migrated."""
    started = wal_cluster.Cluster.start()
    added = wal_cluster.databases(started.port)
    try:
        with django_db_blocker.unblock():
            settings.DATABASES.update(added)
            configured = connections.configure_settings(dict(settings.DATABASES))
            for alias in added:
                connections.settings[alias] = configured[alias]
            with override_settings(DJANGO_MIRROR=wal_cluster.mirror_settings(_base())):
                for alias in added:
                    call_command("migrate", database=alias, verbosity=0)
        yield started
    finally:
        with django_db_blocker.unblock():
            for alias in added:
                connections[alias].close()
                del connections.settings[alias]
                del connections[alias]
                settings.DATABASES.pop(alias, None)
        started.stop()


def _base() -> dict[str, Any]:
    return {k: v for k, v in settings.DJANGO_MIRROR.items() if k not in ("SOURCE", "MODELS")}


@pytest.fixture
def wal(cluster: wal_cluster.Cluster, kinesis: Any, django_db_blocker: Any) -> Iterator[None]:
    """Empty tables on both databases, the publication and a fresh slot, CAPTURE "wal"."""
    with (
        django_db_blocker.unblock(),
        override_settings(DJANGO_MIRROR=wal_cluster.mirror_settings(_base())),
    ):
        empty_cluster()
        call_command("mirror_setup", verbosity=0)
        yield
        stats.flush()  # the figures of this test's captures, while the cluster is allowed
        stats.reset()
        for alias in (SOURCE, TARGET):
            connections[alias].close()


def empty_cluster() -> None:
    """No slot on either database, and the test app's and django-mirror's tables empty on
    both (a TRUNCATE, which capture would stop at: the slots go first). The settings in
    force name the slots."""
    for alias in (SOURCE, TARGET):  # the target's log is read too (promoted models)
        slot.drop_slot(alias)
    for alias in (SOURCE, TARGET):
        connection = connections[alias]
        names = [
            t
            for t in connection.introspection.table_names()
            if t.startswith(("testapp_", "django_mirror_"))
        ]
        with connection.cursor() as cursor:
            cursor.execute(f"TRUNCATE {', '.join(names)} RESTART IDENTITY CASCADE")


def cascade_in_database() -> None:
    """Book.author's foreign key on the source made ``ON DELETE CASCADE``: deleting an
    author deletes its books in the database itself, without Django."""
    with connections[SOURCE].cursor() as cursor:
        cursor.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'testapp_book'::regclass "
            "AND contype = 'f' AND pg_get_constraintdef(oid) LIKE 'FOREIGN KEY (author_id)%%'"
        )
        (constraint,) = cursor.fetchone()
    sql(f"ALTER TABLE testapp_book DROP CONSTRAINT {constraint}")
    sql(
        f"ALTER TABLE testapp_book ADD CONSTRAINT {constraint} FOREIGN KEY (author_id) "
        "REFERENCES testapp_author (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED"
    )


def sql(statement: str, params: Any = None) -> None:
    with connections[SOURCE].cursor() as cursor:
        cursor.execute(statement, params)


def capture() -> None:
    call_command("mirror_capture", "--once", verbosity=0)


def flushed_up_to(lsn: int) -> None:
    """Wait for the log to be flushed to ``lsn`` (the cluster commits asynchronously):
    a slot is read up to the flushed log only."""
    deadline = time.monotonic() + 10
    with connections[SOURCE].cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute("SELECT pg_current_wal_flush_lsn()::text")
            if slot.lsn_int(cursor.fetchone()[0]) >= lsn:
                return
            time.sleep(0.01)
    raise AssertionError("the log was not flushed")


def events(label: str | None = None) -> list[dict[str, Any]]:
    """Every event in the source's outbox, in version order."""
    found = [
        event
        for batch in OutboxBatch.objects.using(SOURCE).order_by("id")
        for event in batch.events()
    ]
    return [e for e in found if label is None or e["model"] == label]


def assert_same(*models_: Any) -> None:
    """Zero differing rows between source and target."""
    for model in models_ or MODELS:
        source, target = rows(model, SOURCE), rows(model, TARGET)
        assert source == target, f"{model.__name__}: {source} != {target}"


def test_raw_sql_triggers_cascades_and_other_connections_are_captured(wal: None) -> None:
    sql("INSERT INTO testapp_author (id, name) VALUES (1, 'ada'), (2, 'bob'), (3, 'cy')")
    sql(
        "INSERT INTO testapp_book (id, author_id, title, pages, isbn) VALUES "
        "(1, 1, 'one', 10, ''), (2, 2, 'two', 20, ''), (3, 2, 'three', 30, '')"
    )
    sql("UPDATE testapp_book SET pages = pages + 1 WHERE id = 1")
    sql("DELETE FROM testapp_book WHERE id = 3")
    # A trigger's writes.
    sql(
        "CREATE FUNCTION tag_author() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO testapp_tag (name) VALUES ('by-' || NEW.name); RETURN NEW; END $$"
    )
    sql(
        "CREATE TRIGGER tag_author AFTER INSERT ON testapp_author "
        "FOR EACH ROW EXECUTE FUNCTION tag_author()"
    )
    try:
        sql("INSERT INTO testapp_author (id, name) VALUES (4, 'dee')")
    finally:
        sql("DROP TRIGGER tag_author ON testapp_author")
        sql("DROP FUNCTION tag_author()")
    # A database-level ON DELETE CASCADE deletes bob's books without Django.
    cascade_in_database()
    sql("DELETE FROM testapp_author WHERE id = 2")
    assert not Book.objects.using(SOURCE).filter(author_id=2).exists()
    # Another program's connection, psycopg alone.
    with psycopg.connect(**connections[SOURCE].get_connection_params(), autocommit=True) as other:
        other.execute("INSERT INTO testapp_author (id, name) VALUES (5, 'eve')")
        other.execute("UPDATE testapp_author SET name = 'ADA' WHERE id = 1")
        with other.transaction():  # two tables in one transaction
            other.execute("INSERT INTO testapp_tag (name) VALUES ('other')")
            other.execute("UPDATE testapp_author SET name = 'cy2' WHERE id = 3")
        with pytest.raises(RuntimeError), other.transaction():  # rolled back: nothing
            other.execute("INSERT INTO testapp_tag (name) VALUES ('never')")
            raise RuntimeError
    # A migration's RunSQL, as migrate runs it.
    run_sql = migrations.RunSQL("INSERT INTO testapp_author (id, name) VALUES (6, 'migrated')")
    with connections[SOURCE].schema_editor() as editor:
        run_sql.database_forwards("testapp", editor, ProjectState(), ProjectState())
    # The ORM's own writes and M2M rows: captured from the log, not by the ORM.
    with transaction.atomic(using=SOURCE):
        book = Book.objects.using(SOURCE).get(pk=1)
        tag = Tag.objects.using(SOURCE).create(name="orm")
        book.tags.add(tag, *Tag.objects.using(SOURCE).filter(name="by-dee"))
    assert OutboxBatch.objects.using(SOURCE).count() == 0
    sql("DELETE FROM testapp_book_tags WHERE tag_id = %s", [tag.pk])
    capture()
    labels = {e["model"] for e in events()}
    assert labels == {"testapp.Author", "testapp.Book", "testapp.Tag", "testapp.Book_tags"}
    assert not [e for e in events("testapp.Tag") if e["row"] and e["row"]["name"] == "never"]
    deleted = {e["pk"] for e in events("testapp.Book") if e["op"] == "delete"}
    assert deleted == {2, 3}
    drain_and_replay()
    assert_same()
    assert rows(Book, TARGET)[1]["pages"] == 11
    assert set(rows(Author, TARGET)) == {1, 3, 4, 5, 6}
    assert len(rows(BookTags, TARGET)) == 1


def test_the_default_relay_thread_ships_what_mirror_capture_stores(wal: None) -> None:
    """With the relay's default mode (the after-commit thread, which the other tests turn
    off), mirror_capture's process ships the transactions it stores, as an app process
    ships its own commits."""
    default_relay = {**wal_cluster.mirror_settings(_base())}
    del default_relay["RELAY"]
    with override_settings(DJANGO_MIRROR=default_relay):
        assert conf.get_settings().relay.on_commit == "thread"
        sql("INSERT INTO testapp_author (id, name) VALUES (1, 'ada'), (2, 'bob')")
        capture()
        assert relay.shipper.wait_idle(10)
        assert not OutboxBatch.objects.using(SOURCE).exists()
        shipped = [
            json.loads(data)["row"]["name"]
            for records in stream_records(get_stream()).values()
            for _, data in records
        ]
        assert sorted(shipped) == ["ada", "bob"]


def test_events_are_those_orm_capture_writes(wal: None) -> None:
    """One ORM write captured twice, by the ORM and from the log: the same events."""
    values = dict(
        id=uuid.uuid4(),
        text="héllo 🎉",
        char="",
        big=2**62,
        small=-3,
        dec=Decimal("12.500000"),
        flt=0.1,
        flag=True,
        day=dt.date(2024, 5, 1),
        moment=dt.datetime(2024, 5, 1, 12, 30, 0, 5, tzinfo=dt.UTC),
        clock=dt.time(8, 15, 30, 250000),
        span=dt.timedelta(days=1, seconds=3, microseconds=5),
        ref=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        blob=b"\x00\x01\xff",
        doc={"$dec": "not a tag", "list": [1, 2.5, None]},
        ip="192.0.2.1",
        maybe=None,
    )
    with override_settings(DJANGO_MIRROR=wal_cluster.mirror_settings(_base(), capture="orm")):
        author = Author.objects.using(SOURCE).create(name="ada")
        AllTypes.objects.using(SOURCE).create(author=author, **values)
        AllTypes.objects.using(SOURCE).filter(pk=values["id"]).update(text="changed")
        Author.objects.using(SOURCE).filter(pk=author.pk).delete()
    by_orm = events()
    assert len(by_orm) == 5  # the delete sets AllTypes.author_id to NULL first
    capture()
    by_log = events()[len(by_orm) :]

    def by_row(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each row's events in their order (versions order one row's events only)."""
        return sorted(found, key=lambda e: (e["model"], json.dumps(e["pk"])))

    by_orm, by_log = by_row(by_orm), by_row(by_log)
    assert [(e["model"], e["op"], e["pk"]) for e in by_log] == [
        (e["model"], e["op"], e["pk"]) for e in by_orm
    ]
    for orm, log in zip(by_orm, by_log, strict=True):
        assert log["row"] == orm["row"]
        assert json.dumps(log["row"], sort_keys=True) == json.dumps(orm["row"], sort_keys=True)
        assert log["version"] > orm["version"]  # the same outbox ids: ORM and log compare
        assert log["source"] == SOURCE
        assert len(log["tx"]) == 32
    assert by_log[0]["tx"] != by_log[-1]["tx"]


@pytest.mark.parametrize("identity", ["DEFAULT", "FULL"])
def test_an_unchanged_toasted_value_is_filled_in(wal: None, identity: str) -> None:
    big = secrets.token_urlsafe(300_000)  # far past the TOAST threshold, incompressible
    sql(f"ALTER TABLE testapp_alltypes REPLICA IDENTITY {identity}")
    try:
        sql(
            "INSERT INTO testapp_alltypes (id, text, char, big, small, dec, flt, flag) "
            "VALUES (%s, %s, '', 0, 0, 0, 0, false)",
            [uuid.UUID(int=1), big],
        )
        capture()
        sql("UPDATE testapp_alltypes SET small = 7")  # text stays where TOAST keeps it
        seen: list[Any] = []
        original = slot.changes.TransactionImages.add

        def spy(self: Any, relation: Any, change: Any) -> None:
            seen.append(change)
            original(self, relation, change)

        with mock.patch.object(slot.changes.TransactionImages, "add", spy):
            capture()
    finally:
        sql("ALTER TABLE testapp_alltypes REPLICA IDENTITY DEFAULT")
    (update,) = seen
    text_column = [
        c.name
        for c in connections[SOURCE].introspection.get_table_description(
            connections[SOURCE].cursor(), "testapp_alltypes"
        )
    ].index("text")
    assert update.new[text_column] is slot.decoder.UNCHANGED  # the log left it out
    last = events("testapp.AllTypes")[-1]
    assert last["row"]["small"] == 7 and last["row"]["text"] == big
    drain_and_replay()
    assert_same(AllTypes)


def test_a_crash_before_the_slot_moves_reads_the_transaction_again(wal: None) -> None:
    for n in range(3):
        sql("INSERT INTO testapp_author (name) VALUES (%s)", [f"a{n}"])
    stored: list[int] = []

    def crash(end_lsn: int) -> None:
        stored.append(end_lsn)
        if len(stored) == 2:
            raise KeyboardInterrupt  # as a kill would: stored, the slot not yet moved

    capturer = slot.Capturer(SOURCE)
    flushed_up_to(capturer.current_lsn())
    with pytest.raises(KeyboardInterrupt):
        capturer.round(after_store=crash)
    capturer.close()
    capture()
    pks = [e["pk"] for e in events("testapp.Author")]
    assert pks == [1, 2, 3, 1, 2, 3]  # the round stored again, none skipped
    drain_and_replay()
    assert_same(Author)


def test_kill_9_of_mirror_capture_loses_nothing(wal: None, cluster: wal_cluster.Cluster) -> None:
    with psycopg.connect(**connections[SOURCE].get_connection_params(), autocommit=True) as other:
        for n in range(300):
            other.execute("INSERT INTO testapp_author (name) VALUES (%s)", [f"a{n}"])
    root = Path(__file__).resolve().parent.parent
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.wal_cluster", str(cluster.port), "--batch-size", "3"],
        cwd=root,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while OutboxBatch.objects.using(SOURCE).count() < 30:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "mirror_capture captured nothing"
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert OutboxBatch.objects.using(SOURCE).count() < 300  # killed mid-stream
    capture()
    pks = [e["pk"] for e in events("testapp.Author")]
    assert set(pks) == set(range(1, 301))  # nothing lost
    assert len(pks) - len(set(pks)) <= 1  # at most the one being stored when killed
    drain_and_replay()
    assert_same(Author)


def test_writes_applied_by_django_mirror_are_not_captured_again(wal: None) -> None:
    """Replay and live apply write with session_replication_role = replica: the
    replica-only trigger mirror_setup installs marks their transactions in the log."""
    with transaction.atomic(using=SOURCE):
        sql("SET LOCAL session_replication_role = replica")
        sql("INSERT INTO testapp_author (name) VALUES ('replayed')")
    sql("INSERT INTO testapp_author (name) VALUES ('app')")
    capture()
    assert [e["row"]["name"] for e in events("testapp.Author")] == ["app"]
    # A model whose writes on the source are not captured now: phase off, or promoted
    # (its rows here are mirrored back from the target).
    for phase in ("off", "promoted"):
        changed = wal_cluster.mirror_settings(_base())
        changed["MODELS"]["testapp.Tag"] = {"target": TARGET, "phase": phase}
        with override_settings(DJANGO_MIRROR=changed):
            sql("INSERT INTO testapp_tag (name) VALUES (%s)", [phase])
            capture()
    assert events("testapp.Tag") == []


def test_truncate_stops_capture_with_a_clear_error(wal: None) -> None:
    sql("INSERT INTO testapp_tag (name) VALUES ('x')")
    sql("TRUNCATE testapp_tag CASCADE")
    with pytest.raises(CommandError, match="TRUNCATE of testapp_tag"):
        capture()


def test_setup_checks_and_drop_slot(wal: None) -> None:
    state = slot.state(SOURCE)
    assert state.wal_level == "logical" and state.slot
    assert list(state.published_tables) == sorted(m._meta.db_table for m in MODELS)
    assert not [m for m in run_checks(databases=[SOURCE]) if m.id.startswith("django_mirror")]
    smaller = wal_cluster.mirror_settings(_base())
    smaller["MODELS"] = {"testapp.Tag": smaller["MODELS"]["testapp.Tag"]}
    with override_settings(DJANGO_MIRROR=smaller):
        warned = [m.id for m in run_checks(databases=[SOURCE]) if m.id.startswith("django_")]
        assert "django_mirror.W009" in warned  # the publication holds other tables
        sql("ALTER TABLE testapp_tag REPLICA IDENTITY NOTHING")
        try:
            report = slot.setup(SOURCE)
        finally:
            sql("ALTER TABLE testapp_tag REPLICA IDENTITY DEFAULT")
        assert report.publication == "updated" and not report.slot_created
        assert report.identity_fixes == ['ALTER TABLE "testapp_tag" REPLICA IDENTITY FULL;']
        assert slot.state(SOURCE).published_tables == ("testapp_tag",)
    with mock.patch.object(
        slot, "state", return_value=slot.SlotState("replica", True, (), True, 0)
    ):
        ids = [m.id for m in run_checks(databases=[SOURCE]) if m.id.startswith("django_")]
    assert "django_mirror.E031" in ids
    out = io.StringIO()
    call_command("mirror_setup", "--json", stdout=out)
    summary, on_target = json.loads(out.getvalue())["wal"]
    assert (summary["alias"], summary["slot"]) == (SOURCE, "django_mirror")
    assert (on_target["alias"], on_target["slot"]) == (TARGET, f"django_mirror_{TARGET}")
    assert summary["publication_change"] == "updated"  # back to every mirrored table
    assert summary["slot_created"] is False
    assert summary["published_tables"] == sorted(m._meta.db_table for m in MODELS)
    call_command("mirror_capture", "--drop-slot", verbosity=0)
    assert not slot.state(SOURCE).slot
    assert "django_mirror.W009" in [m.id for m in run_checks(databases=[SOURCE])]
    with pytest.raises(CommandError, match="replication slot"):
        capture()


def test_capture_setting_is_checked() -> None:
    bad = {**settings.DJANGO_MIRROR, "CAPTURE": "binlog"}
    with override_settings(DJANGO_MIRROR=bad):
        assert [m.id for m in check_capture()] == ["django_mirror.E029"]
    wal_on_default = {**settings.DJANGO_MIRROR, "CAPTURE": "wal"}
    with override_settings(DJANGO_MIRROR=wal_on_default):
        found = [m.id for m in check_capture()]
    if connections["default"].vendor == "postgresql":
        assert found == []
    else:
        assert found == ["django_mirror.E030"]


def test_phase_mirror_is_applied_live_by_mirror_capture(wal: None) -> None:
    """In phase mirror the capture process applies each transaction to the target once
    its events are stored, before replay runs."""
    live = wal_cluster.mirror_settings(_base())
    live["MODELS"]["testapp.Author"] = {"target": TARGET, "phase": "mirror"}
    with override_settings(DJANGO_MIRROR=live):
        sql("INSERT INTO testapp_author (id, name) VALUES (1, 'ada'), (2, 'bob')")
        sql("UPDATE testapp_author SET name = 'ADA' WHERE id = 1")
        sql("DELETE FROM testapp_author WHERE id = 2")
        capture()
        assert rows(Author, TARGET) == {1: {"id": 1, "name": "ADA"}}
        drain_and_replay()  # the same events again through the stream: no change
        assert_same(Author)


def test_a_promoted_model_is_captured_from_the_targets_log(wal: None) -> None:
    """Promoted, the model is written on the target, a PostgreSQL database whose log
    ``mirror_capture --database`` reads: its writes, ORM or not, are captured there once
    (the ORM stands down), applied live back to the old store, and replay converges.
    What django-mirror itself writes on the target, a replay of events captured before
    the switch, and what it mirrors back onto the source are not captured again."""
    sql("INSERT INTO testapp_author (id, name) VALUES (1, 'ada'), (2, 'bob')")
    capture()
    promoted = wal_cluster.mirror_settings(_base())
    promoted["MODELS"]["testapp.Author"] = {"target": TARGET, "phase": "promoted"}
    with override_settings(DJANGO_MIRROR=promoted):
        drain_and_replay()  # in flight at the switch: replayed into the new primary
        assert_same(Author)
        with connections[TARGET].cursor() as cursor:
            cursor.execute("INSERT INTO testapp_author (id, name) VALUES (3, 'cy')")
            cursor.execute("UPDATE testapp_author SET name = 'BOB' WHERE id = 2")
        Author.objects.create(id=4, name="dee")  # the router sends it to the target
        assert not OutboxBatch.objects.using(TARGET).exists()  # the ORM captured nothing
        call_command("mirror_capture", "--database", TARGET, "--once", verbosity=0)
        captured = [
            e for batch in OutboxBatch.objects.using(TARGET).order_by("id") for e in batch.events()
        ]
        assert [(e["source"], e["pk"], e["row"]["name"]) for e in captured] == [
            (TARGET, 3, "cy"),
            (TARGET, 2, "BOB"),
            (TARGET, 4, "dee"),
        ]
        assert rows(Author, SOURCE) == rows(Author, TARGET)  # applied live, back
        drain_and_replay()
        assert_same(Author)
        capture()  # the source's log holds the rows mirrored back: passed over
        assert events("testapp.Author") == []
        call_command("mirror_capture", "--database", TARGET, "--once", verbosity=0)
        assert not OutboxBatch.objects.using(TARGET).exists()  # replay's writes: marked
        # A live apply (foreign keys checked, no replica role) is marked by itself.
        later = {**captured[0], "version": captured[-1]["version"] + 1}
        later["row"] = {**later["row"], "name": "CY"}
        database_target(TARGET, live=True).apply([Event.from_dict(later)])
        assert rows(Author, TARGET)[3]["name"] == "CY"
        call_command("mirror_capture", "--database", TARGET, "--once", verbosity=0)
        assert not OutboxBatch.objects.using(TARGET).exists()
    with pytest.raises(CommandError, match="not PostgreSQL|neither the source"):
        call_command("mirror_capture", "--database", "default", "--once", verbosity=0)


def test_one_process_reads_the_slot(wal: None) -> None:
    first, second = slot.Capturer(SOURCE), slot.Capturer(SOURCE)
    try:
        assert first.acquire()
        assert not second.acquire()
        with pytest.raises(CommandError, match="another mirror_capture holds"):
            capture()
        first.close()  # its backend ends a moment after: the lock with it
        deadline = time.monotonic() + 10
        while not second.acquire():
            assert time.monotonic() < deadline, "the lock outlived its connection"
            time.sleep(0.05)
    finally:
        first.close()
        second.close()


def test_a_migration_adding_or_renaming_a_column(wal: None) -> None:
    """A column the model does not know yet is left out; a column of the model that the
    table lacks stops capture with a clear error, before any wrong row is stored."""
    sql("ALTER TABLE testapp_author ADD COLUMN nickname text DEFAULT 'x'")
    try:
        sql("INSERT INTO testapp_author (id, name) VALUES (1, 'ada')")
        capture()
    finally:
        sql("ALTER TABLE testapp_author DROP COLUMN nickname")
    assert [e["row"] for e in events("testapp.Author")] == [{"id": 1, "name": "ada"}]
    sql("ALTER TABLE testapp_tag RENAME COLUMN name TO label")
    try:
        sql("INSERT INTO testapp_tag (id, label) VALUES (1, 'x')")
        with pytest.raises(CommandError, match="has no column name of testapp.Tag"):
            capture()
    finally:
        sql("ALTER TABLE testapp_tag RENAME COLUMN label TO name")
    assert events("testapp.Tag") == []


def test_concurrent_writers_converge_while_capture_runs(wal: None) -> None:
    """Writers on their own connections race on a few rows in random transactions
    (some rolled back) while capture reads the slot round after round: replayed, the
    target holds what the source holds, row for row."""
    sql("INSERT INTO testapp_author (id, name) SELECT g, 'a' || g FROM generate_series(1, 8) g")
    params = connections[SOURCE].get_connection_params()
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        chance = random.Random(seed)
        try:
            with psycopg.connect(**params, autocommit=True) as conn:
                for n in range(40):
                    try:
                        with conn.transaction():
                            for _ in range(chance.randint(1, 3)):
                                pk = chance.randint(1, 12)
                                kind = chance.random()
                                if kind < 0.4:
                                    conn.execute(
                                        "UPDATE testapp_author SET name = %s WHERE id = %s",
                                        [f"w{seed}-{n}", pk],
                                    )
                                elif kind < 0.7:
                                    conn.execute(
                                        "INSERT INTO testapp_author (id, name) VALUES (%s, %s) "
                                        "ON CONFLICT (id) DO UPDATE SET name = excluded.name",
                                        [pk, f"i{seed}-{n}"],
                                    )
                                else:
                                    conn.execute("DELETE FROM testapp_author WHERE id = %s", [pk])
                            if chance.random() < 0.1:
                                raise LookupError  # rolled back
                    except LookupError:
                        pass
                    except psycopg.errors.DeadlockDetected:
                        pass
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    capturer = slot.Capturer(SOURCE, limit=20)
    try:
        while any(thread.is_alive() for thread in threads):
            capturer.round()
        for thread in threads:
            thread.join()
    finally:
        capturer.close()
    assert not errors
    capture()
    drain_and_replay()
    assert_same(Author)


def test_excluded_fields_never_leave_the_source(wal: None) -> None:
    excluding = wal_cluster.mirror_settings(_base())
    excluding["MODELS"]["testapp.AllTypes"] = {"target": TARGET, "exclude_fields": ["text"]}
    with override_settings(DJANGO_MIRROR=excluding):
        sql(
            "INSERT INTO testapp_alltypes (id, text, char, big, small, dec, flt, flag) "
            "VALUES (%s, 'secret', '', 0, 0, 0, 0, false)",
            [uuid.UUID(int=2)],
        )
        capture()
    (event,) = events("testapp.AllTypes")
    assert "text" not in event["row"] and event["row"]["char"] == ""
