from __future__ import annotations

import time
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError, close_old_connections

from django_mirror.management.commands._base import MirrorCommand, stopping_on_signals
from django_mirror.pipeline import relay
from django_mirror.streams import StreamError


class Command(MirrorCommand):
    help = (
        "Ship captured events to the stream from the outboxes: the source's, and a database "
        "target's once a model is promoted there."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="Drain the outbox and exit.")
        parser.add_argument(
            "--database", help="Only this alias's outbox (default: the source and every target)."
        )
        parser.add_argument("--batch-size", type=int, help="Outbox batches per round.")
        parser.add_argument("--interval", type=float, default=0.5, help="Idle poll seconds.")
        parser.add_argument("--dry-run", action="store_true", help="Only report the backlog.")
        self.add_json_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        using = options["database"] and self.database_alias(options["database"])
        aliases = relay.outbox_aliases(using)
        if options["dry_run"]:
            backlog = relay.backlog(using)
            if options["json"]:
                self.emit_json({"backlog": backlog})
            else:
                self.stdout.write(f"{backlog} events waiting in the outbox of {', '.join(aliases)}")
            return
        stop = {"now": False}
        total = relay.RelayResult()
        failures = 0
        with stopping_on_signals(lambda: stop.update(now=True)):
            while not stop["now"]:
                result = relay.RelayResult()
                try:
                    for alias in aliases:
                        result.add(relay.ship_once(alias, options["batch_size"]))
                except (StreamError, DatabaseError) as exc:
                    if options["once"]:
                        raise CommandError(f"relay failed: {exc}") from exc
                    # A long-running relay rides out deadlocks, restarts and outages.
                    failures += 1
                    self.stderr.write(f"relay round failed ({exc}); retrying")
                    close_old_connections()
                    time.sleep(min(30.0, options["interval"] * 2 ** min(failures, 6)))
                    continue
                failures = 0
                total.add(result)
                if result.batches and options["verbosity"] >= 2:
                    self.stdout.write(f"shipped {result.events} events in {result.batches} batches")
                if result.batches == 0:
                    # --once drains: batches another relay holds are waited for, shipped
                    # by it or, once a dead relay's lease runs out, claimed here.
                    if options["once"] and not result.held_elsewhere:
                        break
                    time.sleep(options["interval"])
        remaining = relay.backlog(using)
        if options["json"]:
            self.emit_json({**total.__dict__, "backlog": remaining})
        elif options["verbosity"] >= 1:
            self.stdout.write(
                f"relayed {total.events} events in {total.batches} batches; "
                f"{remaining} events still in the outbox"
            )
        if options["once"] and total.failed_batches and remaining:
            raise CommandError(
                f"the stream did not accept {total.failed_batches} batches; they stay in the "
                "outbox and will be shipped by the next run"
            )
