from __future__ import annotations

import logging
import time
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError, close_old_connections, connections

from django_mirror.capture.wal import decoder, slot
from django_mirror.checks import check_wal_source
from django_mirror.config import conf
from django_mirror.management.commands._base import MirrorCommand, stopping_on_signals

#: Seconds ``--once`` waits, idle, for the flushed log to reach where it was written to
#: when the command started.
ONCE_WAIT = 5.0

#: Seconds between reads of the slot's lag (the gauge, and the retained-WAL limit).
LAG_INTERVAL = 10.0

logger = logging.getLogger("django_mirror")


class Command(MirrorCommand):
    help = (
        "Capture the source's writes from PostgreSQL's write-ahead log (CAPTURE 'wal'): "
        "each committed transaction on a mirrored table becomes outbox events. "
        "--database reads a PostgreSQL target's log, where promoted models are written."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="Drain the slot and exit.")
        parser.add_argument(
            "--drop-slot", action="store_true", help="Drop the replication slot and exit."
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=10_000,
            help="Log messages read per round (whole transactions).",
        )
        parser.add_argument("--interval", type=float, default=0.2, help="Idle poll seconds.")
        parser.add_argument(
            "--database",
            help="The alias whose log to read: the source (default), or a PostgreSQL "
            "database target once models are promoted to it.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        alias = options["database"] or conf.source_alias()
        if alias not in connections:
            raise CommandError(f"no database alias {alias!r} in DATABASES")
        if connections[alias].vendor != "postgresql":
            raise CommandError(
                f"mirror_capture reads PostgreSQL's log; {alias!r} is not PostgreSQL"
            )
        name = slot.slot_name(alias)
        if options["drop_slot"]:
            dropped = slot.drop_slot(alias)
            self.stdout.write(
                f"dropped replication slot {name!r}" if dropped else f"no replication slot {name!r}"
            )
            return
        if conf.capture_mode() != "wal":
            raise CommandError("DJANGO_MIRROR['CAPTURE'] is not 'wal': the ORM captures writes")
        if alias not in conf.log_captured_aliases():
            raise CommandError(
                f"{alias!r} is neither the source nor a database target of a mirrored model: "
                "no model is written there"
            )
        problems = check_wal_source(databases=[alias])  # wal_level, publication, slot
        # W010 (too much WAL retained) is what capturing cures: warn, never refuse.
        problems = [p for p in problems if p.id != "django_mirror.W010"]
        if problems:
            raise CommandError("; ".join(f"{m.msg} {m.hint or ''}".strip() for m in problems))
        capturer = slot.Capturer(alias, limit=options["batch_size"])
        stop = {"now": False}
        verbosity = options["verbosity"]
        failures = 0
        total = 0
        watch = LagWatch(alias)
        try:
            with stopping_on_signals(lambda: stop.update(now=True)):
                while not capturer.acquire():
                    if options["once"]:
                        raise CommandError(f"another mirror_capture holds slot {name!r}")
                    if verbosity >= 2:
                        self.stdout.write("another process captures; waiting")
                    time.sleep(5.0)
                    if stop["now"]:
                        return
                until = capturer.current_lsn() if options["once"] else None
                idle_since = time.monotonic()
                while not stop["now"]:
                    watch.poll()
                    try:
                        result = capturer.round()
                    except slot.CaptureStopped as exc:
                        raise CommandError(f"capture stopped: {exc}") from exc
                    except decoder.DecodeError as exc:
                        raise CommandError(f"could not decode the log: {exc}") from exc
                    except DatabaseError as exc:
                        if options["once"]:
                            raise
                        failures += 1
                        self.stderr.write(f"capture round failed ({exc}); retrying")
                        capturer.close()
                        close_old_connections()
                        time.sleep(min(30.0, options["interval"] * 2 ** min(failures, 6)))
                        continue
                    failures = 0
                    total += result.events
                    capturer.save_progress()
                    if result.transactions and verbosity >= 2:
                        self.stdout.write(
                            f"captured {result.events} events of {result.transactions} transactions"
                        )
                    if result.transactions or result.skipped:
                        idle_since = time.monotonic()
                    elif until is not None:
                        # --once: done when all committed before the start is stored; the
                        # flushed log may stop short of ``until`` when only records that are
                        # no commit follow (async commits are flushed within a second).
                        if result.read_to >= until or time.monotonic() - idle_since > ONCE_WAIT:
                            break
                        time.sleep(0.02)
                    else:
                        time.sleep(options["interval"])
        except slot.CaptureStopped as exc:  # before the first round: no psycopg 3
            raise CommandError(f"capture stopped: {exc}") from exc
        finally:
            capturer.close()
        capturer.save_progress(force=True)
        watch.poll(force=True)
        if verbosity >= 1:
            self.stdout.write(f"captured {total} events")


class LagWatch:
    """Reads the slot's lag every ``LAG_INTERVAL`` seconds (sending the gauge) and logs
    once when it crosses ``WAL["MAX_RETAINED_BYTES"]``, and once when it is back under."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.read_at: float | None = None
        self.over = False

    def poll(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and self.read_at is not None and now - self.read_at < LAG_INTERVAL:
            return
        self.read_at = now
        lag = slot.lag(self.alias)
        if lag.retained is None or lag.over_limit == self.over:
            return
        self.over = lag.over_limit
        if self.over:
            logger.warning(
                "django-mirror: the replication slot %r retains %d bytes of WAL, more than "
                "DJANGO_MIRROR['WAL']['MAX_RETAINED_BYTES'] (%d) (django_mirror.W010)",
                lag.slot_name,
                lag.retained,
                lag.limit,
            )
        else:
            logger.info(
                "django-mirror: the replication slot %r retains %d bytes of WAL, within "
                "the limit again",
                lag.slot_name,
                lag.retained,
            )
