"""The convergence property of ``tests/test_convergence.py`` with the source captured from
PostgreSQL's log (``CAPTURE = "wal"``) on the throwaway cluster of ``tests/wal_cluster.py``.

The same machine and rules (the ORM's writes, copies killed and resumed, relay, replay
fed duplicated and reordered records), plus: writes the ORM never sees (raw SQL on the
app's connection, a second psycopg connection, a migration's ``RunSQL``, a database
``ON DELETE CASCADE``, a trigger), capture rounds at any point reading part of the slot,
and capture killed after storing a transaction but before confirming the slot past it.
Once everything is captured and drained, the target holds exactly the source's rows and
``mirror_verify`` finds nothing.

Rows written before the slot exists are what the copy exists for: the log of their
writes is never read.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from django.core.management import call_command
from django.db import connections, migrations, transaction
from django.db.migrations.state import ProjectState
from hypothesis import strategies as st
from hypothesis.stateful import rule

from django_mirror.capture.wal import slot
from django_mirror.observability import stats
from tests import wal_cluster
from tests.test_convergence import NAMES, Protocol, names, picks, run_protocol
from tests.test_wal_capture import assert_same, cascade_in_database, cluster, empty_cluster, sql
from tests.testapp.models import Author, Book, Counter
from tests.wal_cluster import SOURCE, TARGET

REASON = wal_cluster.unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"WAL capture: {REASON}")

__all__ = ["cluster"]  # the cluster fixture, shared with test_wal_capture.py

#: Each example resets two databases and creates a slot; steps capture, copy and replay
#: against a real PostgreSQL: under a minute on a loaded 2-core machine.
EXAMPLES = 20

#: Picks one author by ``index`` (none when there is none).
PICK_AUTHOR = (
    "SELECT id FROM testapp_author ORDER BY id "
    "OFFSET mod(%(index)s, greatest((SELECT count(*) FROM testapp_author), 1)) LIMIT 1"
)

#: Writes another program makes, with the parameters ``name``, ``other`` (names of
#: ``NAMES``), ``delta``, ``index`` and ``text``. Deleting an author deletes its books
#: in the database (``cascade_in_database``) and fires ``COUNT_DELETES``.
RAW = {
    "bump counter": "UPDATE testapp_counter SET value = value + %(delta)s WHERE name = %(name)s",
    "upsert counter": (
        "INSERT INTO testapp_counter (name, value) VALUES (%(name)s, %(delta)s) "
        "ON CONFLICT (name) DO UPDATE SET value = testapp_counter.value + excluded.value"
    ),
    "rename counter": (
        "UPDATE testapp_counter SET name = %(other)s WHERE name = %(name)s "
        "AND NOT EXISTS (SELECT FROM testapp_counter WHERE name = %(other)s)"
    ),
    "delete counter": "DELETE FROM testapp_counter WHERE name = %(name)s",
    "insert author": "INSERT INTO testapp_author (name) VALUES (%(text)s)",
    "rename authors": (
        "UPDATE testapp_author SET name = left(%(text)s || name, 12) "
        "WHERE mod(id, 2) = mod(%(index)s, 2)"
    ),
    "delete author": f"DELETE FROM testapp_author WHERE id = ({PICK_AUTHOR})",
    "insert book": (
        "INSERT INTO testapp_book (author_id, title, pages, isbn) "
        f"SELECT id, %(text)s, %(delta)s, '' FROM testapp_author WHERE id = ({PICK_AUTHOR})"
    ),
    "turn pages": (
        "UPDATE testapp_book SET pages = pages + %(delta)s WHERE mod(id, 3) = mod(%(index)s, 3)"
    ),
}

#: A trigger's writes: each deleted author, however deleted, counted on a counter of
#: ``NAMES`` (created when missing).
COUNT_DELETES = (
    "CREATE FUNCTION count_deletes() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "INSERT INTO testapp_counter (name, value) "
    f"VALUES ('n' || mod(OLD.id, {len(NAMES)}), 1) "
    "ON CONFLICT (name) DO UPDATE SET value = testapp_counter.value + 1; "
    "RETURN OLD; END $$",
    "CREATE TRIGGER count_deletes AFTER DELETE ON testapp_author "
    "FOR EACH ROW EXECUTE FUNCTION count_deletes()",
)

raw_writes = st.lists(
    st.fixed_dictionaries(
        {
            "statement": st.sampled_from(sorted(RAW)),
            "name": names,
            "other": names,
            "delta": st.integers(-3, 3),
            "index": picks,
            "text": st.text("xyz", min_size=1, max_size=3),
        }
    ),
    min_size=1,
    max_size=3,
)


class CaptureKilled(Exception):
    """Ends a capture round after a transaction is stored, before the slot moves."""


def flush_log() -> None:
    """Every commit so far in the flushed log, which is as far as a slot is read: the
    cluster commits asynchronously, and a round would otherwise read whatever the WAL
    writer happened to flush. One synchronous commit flushes the log up to it (its
    transactional message, which capture ignores, gives it something to commit)."""
    with transaction.atomic(using=SOURCE):
        sql("SET LOCAL synchronous_commit = on")
        sql("SELECT pg_logical_emit_message(true, 'tests.flush', '')")


class WalProtocol(Protocol):
    """The source on the cluster, read from its log; books too, for the cascade."""

    MIRRORED = (Counter, Author, Book)

    def mirror_settings(self) -> dict[str, Any]:
        mirror = wal_cluster.mirror_settings(super().mirror_settings())
        mirror["MODELS"] = {
            model._meta.label: {"target": TARGET, "phase": "capture"} for model in self.MIRRORED
        }
        return mirror

    def reset(self) -> None:
        empty_cluster()

    @contextmanager
    def before_capture(self) -> Iterator[None]:
        """The slot is created after the block: the log of its writes is never read."""
        yield
        slot.setup(SOURCE)

    def capture_all(self) -> None:
        flush_log()
        call_command("mirror_capture", "--once", verbosity=0)

    def assert_target_holds_source(self) -> None:
        assert_same(*self.MIRRORED)

    # --- writes the ORM never sees ------------------------------------------------------

    @rule(writes=raw_writes, via=st.sampled_from(["cursor", "psycopg", "RunSQL"]))
    def raw_sql(self, writes: list[dict[str, Any]], via: str) -> None:
        """One transaction of raw statements: on the app's own connection, on a second
        connection with psycopg alone, or as a migration's ``RunSQL``."""
        statements = [(RAW[write["statement"]], write) for write in writes]
        if via == "cursor":
            with transaction.atomic(using=SOURCE), connections[SOURCE].cursor() as cursor:
                for statement, params in statements:
                    cursor.execute(statement, params)
        elif via == "psycopg":
            params = connections[SOURCE].get_connection_params()
            with psycopg.connect(**params, autocommit=True) as other, other.transaction():
                for statement, values in statements:
                    other.execute(statement, values)
        else:
            migration = migrations.RunSQL(statements)
            with connections[SOURCE].schema_editor() as editor:
                migration.database_forwards("testapp", editor, ProjectState(), ProjectState())

    @rule(writes=raw_writes)
    def raw_sql_rolled_back(self, writes: list[dict[str, Any]]) -> None:
        """Another program's transaction rolled back: nothing in the log to capture."""
        params = connections[SOURCE].get_connection_params()
        with psycopg.connect(**params, autocommit=True) as other:
            with other.transaction():
                for write in writes:
                    other.execute(RAW[write["statement"]], write)
                raise psycopg.Rollback

    @rule(index=picks, pages=st.integers(0, 9), title=st.text("pq", min_size=1, max_size=3))
    def write_book(self, index: int, pages: int, title: str) -> None:
        """The ORM's books: a new one for some author, or one's pages changed."""
        book = self._pick(Book, index)
        if book is None or index % 2:
            author = self._pick(Author, index)
            if author is not None:
                self.db(Book).create(author=author, title=title, pages=pages)
        else:
            book.pages = pages
            book.save(update_fields=["pages"])

    # --- capture ------------------------------------------------------------------------

    @rule(limit=st.integers(1, 40), whole=st.booleans())
    def capture_round(self, limit: int, whole: bool) -> None:
        """``mirror_capture --once``, or one round of a capture process reading at most
        ``limit`` log messages (whole transactions): the rest waits in the slot."""
        flush_log()
        if whole:
            call_command("mirror_capture", "--once", verbosity=0)
            return
        capturer = slot.Capturer(SOURCE, limit=limit)
        try:
            capturer.round()
        finally:
            capturer.close()

    @rule(limit=st.integers(1, 40), stored=st.integers(1, 3))
    def capture_killed_before_the_slot_moves(self, limit: int, stored: int) -> None:
        """A capture process killed once it stored the ``stored``-th transaction of its
        round (``after_store``), before it confirmed the slot past it: the next round
        reads what it stored again and stores it a second time, with higher versions."""
        flush_log()
        count = 0

        def kill(end_lsn: int) -> None:
            nonlocal count
            count += 1
            if count == stored:
                raise CaptureKilled

        capturer = slot.Capturer(SOURCE, limit=limit)
        try:
            capturer.round(after_store=kill)
        except CaptureKilled:
            pass
        finally:
            capturer.close()  # its connection goes with it, as with a kill


@pytest.fixture(scope="module")
def wal_source(cluster: wal_cluster.Cluster, django_db_blocker: Any) -> Iterator[None]:
    """The cluster as this module's source: Counter's table on the target too (the
    cluster migrates its target for ``wal_cluster.LABELS``), Book.author cascading in
    the database, and the ``COUNT_DELETES`` trigger."""
    with django_db_blocker.unblock():
        target = connections[TARGET]
        if Counter._meta.db_table not in target.introspection.table_names():
            with target.schema_editor() as editor:
                editor.create_model(Counter)
        cascade_in_database()
        for statement in COUNT_DELETES:
            sql(statement)
        try:
            yield
        finally:
            stats.reset()  # the examples' figures: their source is gone with the settings
            for alias in (SOURCE, TARGET):
                connections[alias].close()


def test_wal_capture_copy_relay_and_replay_converge_for_any_interleaving(
    aws: None, wal_source: None
) -> None:
    run_protocol(WalProtocol, EXAMPLES)
