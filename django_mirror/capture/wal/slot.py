"""The publication and the logical replication slot on a captured database (the source,
and a PostgreSQL target where a promoted model is written), and the loop that reads the
slot: each committed transaction's changes stored as outbox batches, then the slot
confirmed past it.

The slot is read with ``pg_logical_slot_peek_binary_changes`` on a plain connection (no
replication protocol), and confirmed with ``pg_replication_slot_advance`` only once the
transaction's batches committed: a crash reads the transaction again, never skips it.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import connections, transaction

from django_mirror.capture import outbox, record
from django_mirror.capture.wal import changes, decoder
from django_mirror.config import conf
from django_mirror.core.applied import APPLIED_PREFIX
from django_mirror.models import CaptureProgress
from django_mirror.observability import reporting

logger = logging.getLogger("django_mirror.capture")

#: Names of the publication, the source's slot and the marker trigger. Slot names are
#: the cluster's, not a database's: a target's slot carries its alias (``slot_name``).
PUBLICATION = "django_mirror"
SLOT = "django_mirror"
#: Seconds between saves of ``CaptureProgress`` while capturing (the lag in seconds is
#: that much coarser; one small write a second on the captured database).
PROGRESS_INTERVAL = 1.0
MARKER = "django_mirror_applied"


class CaptureStopped(RuntimeError):
    """The log holds something capture must not carry on past (a TRUNCATE, a table that
    no longer matches its model): the slot stays where it is."""


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lsn_int(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def slot_name(alias: str | None = None) -> str:
    """The slot of ``alias``: ``django_mirror`` on the source, ``django_mirror_<alias>``
    on a target, which may share the source's cluster."""
    alias = alias or conf.source_alias()
    if alias == conf.source_alias():
        return SLOT
    return f"{SLOT}_{re.sub('[^a-z0-9_]', '_', alias.lower())}"[:63]


def captured_aliases() -> list[str]:
    """The aliases whose log ``mirror_capture`` reads, the source first."""
    source = conf.source_alias()
    return sorted(conf.log_captured_aliases(), key=lambda alias: (alias != source, alias))


def tables(alias: str | None = None) -> list[str]:
    """The tables published on ``alias``: its mirrored models' and their auto-created M2M
    tables', whatever their phase (which capture looks at per round)."""
    return sorted(changes.shapes(alias, capturing_only=False))


def _quote(alias: str, name: str) -> str:
    return connections[alias].ops.quote_name(name)


@dataclass
class SetupReport:
    publication: str = ""  # "created", "updated" or "" when it was already right
    slot_created: bool = False
    tables: list[str] = field(default_factory=list)
    #: ``ALTER TABLE`` statements for tables whose log cannot name an old row.
    identity_fixes: list[str] = field(default_factory=list)


def setup(alias: str) -> SetupReport:
    """Create or update the publication (exactly the mirrored tables), the slot, and the
    replica-only trigger that marks django-mirror's own writes (see ``APPLIED_PREFIX``)."""
    report = SetupReport(tables=tables(alias))
    names = ", ".join(_quote(alias, t) for t in report.tables)
    connection = connections[alias]
    with transaction.atomic(using=alias), connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename FROM pg_publication_tables WHERE pubname = %s", [PUBLICATION]
        )
        published = sorted(row[0] for row in cursor.fetchall())
        cursor.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", [PUBLICATION])
        if cursor.fetchone() is None:
            cursor.execute(
                f"CREATE PUBLICATION {_quote(alias, PUBLICATION)} FOR TABLE {names} "
                "WITH (publish_via_partition_root = true)"  # a partitioned table's rows as its own
            )
            report.publication = "created"
        elif published != report.tables:
            cursor.execute(f"ALTER PUBLICATION {_quote(alias, PUBLICATION)} SET TABLE {names}")
            report.publication = "updated"
        cursor.execute(
            f"CREATE OR REPLACE FUNCTION {MARKER}() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN PERFORM pg_logical_emit_message(true, '{APPLIED_PREFIX}', ''); "
            "RETURN NULL; END $$"
        )
        for table in report.tables:
            quoted = _quote(alias, table)
            cursor.execute(f"DROP TRIGGER IF EXISTS {MARKER} ON {quoted}")
            cursor.execute(
                f"CREATE TRIGGER {MARKER} AFTER INSERT OR UPDATE OR DELETE ON {quoted} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {MARKER}()"
            )
            cursor.execute(f"ALTER TABLE {quoted} ENABLE REPLICA TRIGGER {MARKER}")
    report.identity_fixes = identity_fixes(alias)
    with connection.cursor() as cursor:  # not in a transaction that wrote: PostgreSQL says so
        name = slot_name(alias)
        cursor.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [name])
        if cursor.fetchone() is None:
            cursor.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [name])
            report.slot_created = True
    return report


def identity_fixes(alias: str) -> list[str]:
    """``ALTER TABLE ... REPLICA IDENTITY FULL`` for each mirrored table whose updates and
    deletes the log could not key: no primary key under the default identity, or none."""
    fixes = []
    with connections[alias].cursor() as cursor:
        for table in tables(alias):
            cursor.execute(
                "SELECT c.relreplident, EXISTS (SELECT 1 FROM pg_index i "
                "WHERE i.indrelid = c.oid AND i.indisprimary) "
                "FROM pg_class c WHERE c.oid = to_regclass(%s)",
                [_quote(alias, table)],
            )
            row = cursor.fetchone()
            if row is None:
                continue  # not migrated yet; the check says so
            identity, has_pk = row
            if identity == "n" or (identity == "d" and not has_pk):
                fixes.append(f"ALTER TABLE {_quote(alias, table)} REPLICA IDENTITY FULL;")
    return fixes


#: Bytes of WAL the slot ``s`` holds back, between its confirmed position and now.
RETAINED_BYTES = "pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint"


@dataclass(frozen=True)
class SlotState:
    wal_level: str
    publication: bool
    published_tables: tuple[str, ...]
    slot: bool
    #: Bytes of WAL the slot holds back, between its confirmed position and now.
    lag_bytes: int | None


def state(alias: str) -> SlotState:
    with connections[alias].cursor() as cursor:
        cursor.execute("SHOW wal_level")
        wal_level = cursor.fetchone()[0]
        cursor.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", [PUBLICATION])
        publication = cursor.fetchone() is not None
        cursor.execute(
            "SELECT tablename FROM pg_publication_tables WHERE pubname = %s", [PUBLICATION]
        )
        published = tuple(sorted(row[0] for row in cursor.fetchall()))
        cursor.execute(
            f"SELECT {RETAINED_BYTES} FROM pg_replication_slots s WHERE s.slot_name = %s",
            [slot_name(alias)],
        )
        row = cursor.fetchone()
    return SlotState(wal_level, publication, published, row is not None, row and row[0])


def retained(alias: str) -> tuple[int, float | None] | None:
    """Bytes of WAL the slot holds back, and seconds since the moment up to which every
    commit is stored (None before ``mirror_capture`` first stored its progress); None
    without a slot. One query, cheap enough for ``mirror_status`` and the gauges."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"SELECT {RETAINED_BYTES}, "
            "EXTRACT(EPOCH FROM clock_timestamp() - p.caught_up_to)::float8 "
            f"FROM pg_replication_slots s LEFT JOIN {_progress_table(alias)} p "
            "ON p.slot = s.slot_name WHERE s.slot_name = %s",
            [slot_name(alias)],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    return int(row[0] or 0), None if row[1] is None else max(0.0, float(row[1]))


def _progress_table(alias: str) -> str:
    return _quote(alias, CaptureProgress._meta.db_table)


@dataclass(frozen=True)
class SlotLag:
    """A slot's lag as ``mirror_status``, the dashboard and ``mirror_capture`` show it:
    the WAL it retains, and how old the newest moment is up to which every commit is
    stored. PostgreSQL keeps no commit time per log position, so the seconds come from
    ``CaptureProgress``, which ``mirror_capture`` updates about once a second."""

    alias: str
    #: Bytes of WAL held back; None when unknown (the read failed) or there is no slot.
    retained: int | None
    #: Whether the slot exists; None when the read failed.
    slot: bool | None
    #: ``WAL["MAX_RETAINED_BYTES"]``.
    limit: int
    #: Seconds behind; None when unknown or ``mirror_capture`` never stored anything.
    seconds: float | None = None

    @property
    def slot_name(self) -> str:
        return slot_name(self.alias)

    @property
    def over_limit(self) -> bool:
        return self.retained is not None and self.retained > self.limit

    def as_dict(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "slot_name": self.slot_name,
            "slot": self.slot,
            "slot_lag_bytes": self.retained,
            "slot_lag_seconds": None if self.seconds is None else round(self.seconds, 3),
            "max_retained_bytes": self.limit,
            "over_limit": self.over_limit,
        }

    def text(self) -> str:
        """One line: the lag, "unknown" or "no slot", and a warning past the limit."""
        if self.slot is None:
            return "unknown"
        if not self.slot:
            return "no slot"
        behind = "never captured" if self.seconds is None else f"{self.seconds:.1f} s behind"
        if self.over_limit:
            return f"{self.retained} bytes, {behind} (over the limit of {self.limit})"
        return f"{self.retained} bytes, {behind}"


def lag(alias: str) -> SlotLag:
    """Read the slot's lag and send it as the ``capture.slot_lag_bytes`` and
    ``capture.slot_lag_seconds`` gauges (a target's with ``.<alias>`` appended). A failed
    read is counted and logged like other instrumentation failures and gives "unknown",
    so the page or command showing it never breaks."""
    limit = conf.get_settings().wal.max_retained_bytes
    with reporting.guarded("could not read the replication slot's lag"):
        with transaction.atomic(using=alias):  # a failed query must not abort the caller's
            found = retained(alias)
        if found is None:
            return SlotLag(alias, None, False, limit)
        suffix = "" if alias == conf.source_alias() else f".{alias}"
        reporting.gauge(f"capture.slot_lag_bytes{suffix}", found[0])
        if found[1] is not None:
            reporting.gauge(f"capture.slot_lag_seconds{suffix}", found[1])
        return SlotLag(alias, found[0], True, limit, found[1])
    return SlotLag(alias, None, None, limit)


def lags() -> list[SlotLag]:
    """The lag of every slot ``mirror_capture`` reads: the source's first."""
    return [lag(alias) for alias in captured_aliases()]


def drop_slot(alias: str) -> bool:
    """Drop the slot (the WAL it held is freed) and its stored progress; False when
    there was none."""
    name = slot_name(alias)
    CaptureProgress.objects.using(alias).filter(slot=name).delete()
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [name])
        if cursor.fetchone() is None:
            return False
        cursor.execute("SELECT pg_drop_replication_slot(%s)", [name])
    return True


@dataclass
class RoundResult:
    transactions: int = 0
    events: int = 0
    skipped: int = 0  # transactions django-mirror applied itself
    #: Every commit before this LSN was read (the log flushed when the round began).
    read_to: int = 0
    #: Every commit before this moment is stored (database clock); None when the round
    #: stored no whole transaction and did not read to the end.
    caught_up_to: dt.datetime | None = None


class Capturer:
    """Reads the slot of ``alias`` and stores each committed transaction in its outbox.

    The slot is read on a connection of its own (autocommit, UTC, ISO dates, so values
    come out in the text forms ``changes`` reads); batches are written on the alias's
    Django connection. One process per slot captures at a time: the others wait on an
    advisory lock.
    """

    def __init__(self, alias: str | None = None, limit: int = 10_000) -> None:
        self.alias = alias or conf.source_alias()
        self.slot = slot_name(self.alias)
        self.limit = limit
        self._reader: Any = None
        self._progress: tuple[int, dt.datetime] | None = None
        self._saved_at = 0.0
        #: Where this process last confirmed the slot to (a lower bound of it).
        self._confirmed = 0

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def reader(self) -> Any:
        """The slot's connection: the alias's parameters, without Django's cursor and
        adapters, so values arrive as the server's text."""
        if self._reader is None or self._reader.closed:
            try:
                import psycopg  # psycopg 3 only, imported where WAL capture runs
            except ImportError as exc:
                raise CaptureStopped("WAL capture needs psycopg 3 (pip install psycopg)") from exc
            params = connections[self.alias].get_connection_params()
            params.pop("cursor_factory", None)
            params.pop("context", None)
            raw = psycopg.connect(**params, autocommit=True)
            for statement in (
                "SET TimeZone = 'UTC'",
                "SET DateStyle = 'ISO'",
                "SET IntervalStyle = 'postgres'",
                "SET extra_float_digits = 1",
                "SET bytea_output = 'hex'",
                "SET application_name = 'django_mirror capture'",
            ):
                raw.execute(statement)
            self._reader = raw
        return self._reader

    def acquire(self) -> bool:
        """Whether this process is the slot's one reader (an advisory lock, held for the
        reader connection's life)."""
        key = zlib.crc32(f"django_mirror slot {self.slot}".encode())
        row = self.reader().execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()
        return bool(row[0])

    def advance(self, lsn: int) -> None:
        """Confirm the slot up to ``lsn``; never backwards, which PostgreSQL refuses (a
        round's commits may lie past the flush position read when it began)."""
        self.reader().execute(
            "SELECT pg_replication_slot_advance(slot_name, "
            "GREATEST(%s::pg_lsn, confirmed_flush_lsn)) "
            "FROM pg_replication_slots WHERE slot_name = %s",
            [lsn_text(lsn), self.slot],
        )
        self._confirmed = max(self._confirmed, lsn)

    def round(self, after_store: Callable[[int], None] | None = None) -> RoundResult:
        """Read what the slot holds (up to ``limit`` messages, whole transactions), store
        its transactions in one transaction of ours, then confirm the slot past them.

        Once a round, not once a transaction: every confirmation and every read decodes
        the log again from the slot's restart point, so their cost grows with the
        backlog. A crash before the confirmation stores the round a second time.
        ``after_store`` is called with each stored transaction's end LSN once they are
        stored, before the slot moves (tests stop there)."""
        reader = self.reader()
        position, moment = reader.execute(
            "SELECT pg_current_wal_flush_lsn()::text, clock_timestamp()"
        ).fetchone()
        flushed = lsn_int(position)
        # Nothing flushed since: skip the read, which decodes the log again from the
        # slot's restart point (up to 15 s back) on the server.
        rows = (
            []
            if flushed <= self._confirmed
            else reader.execute(
                "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, %s, "
                "'proto_version', '1', 'publication_names', %s, 'messages', 'true')",
                [self.slot, self.limit, PUBLICATION],
            ).fetchall()
        )
        result = RoundResult()
        shapes = changes.shapes(self.alias)
        published = frozenset(tables(self.alias))
        relations: dict[int, decoder.Relation] = {}
        begin: decoder.Begin | None = None
        images: changes.TransactionImages | None = None
        applied = False
        committed: list[tuple[decoder.Begin, changes.TransactionImages]] = []
        ends: list[int] = []
        for (data,) in rows:
            message = decoder.decode(data)
            if isinstance(message, decoder.Begin):
                begin, applied = message, False
                images = changes.TransactionImages(shapes, self._refill, published, self.alias)
            elif isinstance(message, decoder.Relation):
                relations[message.oid] = message
            elif isinstance(message, decoder.Change):
                if images is None:
                    raise decoder.DecodeError("a change outside a transaction")
                if not applied:
                    try:
                        images.add(relations[message.relation_oid], message)
                    except changes.SchemaMismatch as exc:
                        raise CaptureStopped(str(exc)) from exc
            elif isinstance(message, decoder.Message):
                applied = applied or (message.transactional and message.prefix == APPLIED_PREFIX)
            elif isinstance(message, decoder.Origin):
                applied = True  # replayed from elsewhere by PostgreSQL's own replication
            elif isinstance(message, decoder.Truncate):
                names = ", ".join(relations[oid].name for oid in message.relation_oids)
                raise CaptureStopped(
                    f"TRUNCATE of {names}: capture cannot carry it (no rows are named); "
                    "copy and verify the models, then drop and set up the slot again"
                )
            elif isinstance(message, decoder.Commit):
                if begin is None or images is None:
                    raise decoder.DecodeError("a commit outside a transaction")
                if applied:
                    result.skipped += 1
                else:
                    committed.append((begin, images))
                    ends.append(message.end_lsn)
                result.read_to = message.end_lsn
                result.caught_up_to = changes.commit_datetime(begin.commit_time)
                begin = images = None
        result.events = self._store(committed)
        result.transactions = len(committed)
        if after_store is not None:
            for end in ends:
                after_store(end)
        if len(rows) < self.limit and flushed > result.read_to:
            # every commit up to ``flushed`` was read (the peek may have read past it)
            result.read_to = flushed
            result.caught_up_to = changes.field_time(moment)
        if result.read_to > self._confirmed:
            self.advance(result.read_to)
        if result.caught_up_to is not None:
            self._progress = (result.read_to, result.caught_up_to)
        return result

    def save_progress(self, force: bool = False) -> None:
        """Store how far the slot is captured (``CaptureProgress``, for the lag in
        seconds), at most every ``PROGRESS_INTERVAL`` seconds unless ``force``."""
        now = time.monotonic()
        if self._progress is None or (not force and now - self._saved_at < PROGRESS_INTERVAL):
            return
        lsn, caught_up_to = self._progress
        CaptureProgress.objects.using(self.alias).update_or_create(
            slot=self.slot, defaults={"lsn": lsn_text(lsn), "caught_up_to": caught_up_to}
        )
        self._saved_at = now
        self._progress = None

    def current_lsn(self) -> int:
        """Where the log is written to now: commits before it are "there" for ``--once``
        (with ``synchronous_commit = off`` they reach the flushed log a moment later)."""
        row = self.reader().execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        return lsn_int(row[0])

    def _store(self, committed: list[tuple[decoder.Begin, changes.TransactionImages]]) -> int:
        """The source transactions' payloads in the outbox, in commit order (so batch
        ids, hence versions, grow in it), in one transaction of ours; the relay's
        after-commit hooks are told, as after an ORM write."""
        payloads = [
            found
            for begin, images in committed
            for found in images.payloads(
                changes.transaction_id(begin.final_lsn, begin.xid), begin.commit_time
            )
        ]
        if not payloads:
            return 0
        connection = connections[self.alias]
        # A model in phase mirror is applied live once this commits, here, as after an
        # ORM write (the outbox's live hooks): before the slot moves past it.
        with transaction.atomic(using=self.alias):
            for shape, payload in payloads:
                outbox.write(connection, shape.label, payload, mirrored_live=shape.live)
        events = 0
        with reporting.guarded("after-capture bookkeeping failed; the outbox keeps the events"):
            for shape, payload in payloads:
                events += len(payload.ops)
                reporting.incr("captured", len(payload.ops), shape.label)
            for hook in record.committed_hooks:
                hook(self.alias)
        return events

    def _refill(self, shape: changes.Shape, pk: Any, columns: Any) -> dict[str, Any] | None:
        """Unchanged TOASTed values the log left out, read from the row as it is now."""
        found = record.read_rows(shape.model, [pk], self.alias)
        if not found:
            return None
        by_column = {f.column: f.attname for f in shape.fields}
        return {column: found[0][by_column[column]] for column in columns}
