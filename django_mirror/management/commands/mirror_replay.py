from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError

from django_mirror.management.commands._base import MirrorCommand, stopping_on_signals
from django_mirror.pipeline.checkpoints import ReplayRefused
from django_mirror.pipeline.replay import QUIET_PROGRESS_SECONDS, Replayer, ReplayStats
from django_mirror.streams import StreamError


class Command(MirrorCommand):
    help = "Apply the stream's events to each mirrored model's target."

    def add_arguments(self, parser: CommandParser) -> None:
        self.add_model_filter_argument(
            parser, "Replay only this model (repeatable); kept on its own checkpoints."
        )
        parser.add_argument(
            "--from-start",
            action="store_true",
            help="Forget checkpoints and replay all the stream still holds.",
        )
        parser.add_argument(
            "--until-caught-up", action="store_true", help="Exit 0 once every shard reports no lag."
        )
        parser.add_argument("--batch-size", type=int, help="Records per read and apply.")
        parser.add_argument(
            "--dry-run", action="store_true", help="Show shards and checkpoints, apply nothing."
        )
        self.add_json_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        configs = self.resolve_models(options["models"]) if options["models"] else None
        verbosity = options["verbosity"]

        def progress(stats: ReplayStats) -> None:
            if verbosity >= 1 and not options["json"]:
                self.stdout.write(stats.line())

        replayer = Replayer(
            models=[c.label for c in configs] if configs else None,
            batch_size=options["batch_size"],
            progress=progress,
            # A log (no terminal) gets a line when something changed, or once a minute.
            quiet_every=None if self.stdout.isatty() else QUIET_PROGRESS_SECONDS,
        )

        if options["dry_run"]:
            shards = replayer.stream.shards()
            self.stdout.write(
                f"stream {replayer.stream.name!r}: {len(shards)} shards, "
                f"consumer {replayer.consumer!r}"
            )
            return

        def request_stop() -> None:
            replayer.stop = True

        try:
            if options["from_start"]:
                replayer.reset()
            with stopping_on_signals(request_stop):
                stats = replayer.run(until_caught_up=options["until_caught_up"])
        except ReplayRefused as exc:
            raise CommandError(f"replay refused: {exc}") from exc
        except (StreamError, DatabaseError) as exc:
            raise CommandError(f"replay failed: {exc}") from exc
        if options["json"]:
            self.emit_json(
                {
                    "read": stats.read,
                    "applied": stats.applied,
                    "stale": stats.stale,
                    "skipped": stats.skipped,
                    "dead_letters": stats.dead_letters,
                    "shards": {k: v.__dict__ for k, v in stats.shards.items()},
                }
            )
