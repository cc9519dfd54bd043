from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError, models

from django_mirror.config import conf, labels
from django_mirror.management.commands._base import MirrorCommand, stopping_on_signals
from django_mirror.pipeline.copy import Copier, CopyRefused, CopyStats, check_capturing


def _bar(stats: CopyStats, width: int = 30) -> str:
    done = stats.read / stats.total if stats.total else 1.0
    filled = int(width * min(done, 1.0))
    eta = f"{stats.eta:,.0f}s" if stats.eta is not None else "?"
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {stats.read:,}/{stats.total:,} rows "
        f"{stats.rate:,.0f} rows/s ETA {eta}"
    )


class Command(MirrorCommand):
    help = "Copy the existing rows of mirrored models into their targets (insert-if-absent)."

    def add_arguments(self, parser: CommandParser) -> None:
        self.add_models_argument(parser, "copy")
        parser.add_argument("--chunk-size", type=int, help="Rows per chunk (default: adaptive).")
        parser.add_argument(
            "--throttle",
            type=float,
            metavar="ROWS_PER_S",
            help="Copy at most this many rows per second.",
        )
        parser.add_argument(
            "--restart",
            action="store_true",
            help="Start over instead of resuming from the checkpoint.",
        )
        parser.add_argument(
            "--force",
            action="store_true",
            help="Copy even when the model's writes are not being captured.",
        )
        parser.add_argument("--dry-run", action="store_true", help="Count rows, copy nothing.")
        self.add_json_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            configs = labels.tables(options["models"])
        except labels.UnknownLabels as exc:
            raise CommandError(str(exc)) from exc
        if options["chunk_size"] is not None and options["chunk_size"] < 1:
            raise CommandError("--chunk-size must be at least 1")
        if options["throttle"] is not None and options["throttle"] <= 0:
            raise CommandError("--throttle must be positive")
        if not options["force"]:
            for config in configs:
                try:
                    check_capturing(config)
                except CopyRefused as exc:
                    raise CommandError(str(exc)) from exc
        verbosity = options["verbosity"]
        tty = sys.stdout.isatty() and not options["json"]
        reports = []
        for config in configs:
            if options["dry_run"]:
                count = models.QuerySet(model=config.model, using=conf.source_alias()).count()
                reports.append({"model": config.label, "rows": count})
                if not options["json"]:
                    self.stdout.write(f"{config.label}: {count} rows would be copied")
                continue

            def progress(stats: CopyStats) -> None:
                if options["json"] or verbosity < 1:
                    return
                if tty:
                    self.stdout.write(f"\r{stats.model} {_bar(stats)}", ending="")
                    self.stdout.flush()
                elif verbosity >= 2 or stats.finished:
                    self.stdout.write(f"{stats.model}: {_bar(stats)}")

            copier = Copier(
                config,
                chunk_size=options["chunk_size"],
                throttle=options["throttle"],
                progress=progress,
            )

            def request_stop(copier: Copier = copier) -> None:
                copier.stop = True

            try:
                with stopping_on_signals(request_stop):
                    stats = copier.run(restart=options["restart"])
            except (DatabaseError, CopyRefused, NotImplementedError) as exc:
                raise CommandError(f"copy of {config.label} failed: {exc}") from exc
            if tty:
                self.stdout.write("")
            reports.append(stats.as_dict())
            if verbosity >= 1 and not options["json"]:
                self.stdout.write(
                    f"{config.label}: {stats.copied} copied, {stats.skipped} already there, "
                    f"{stats.clashed} left to replay, in {stats.elapsed:.1f}s"
                    + ("" if stats.finished else " (stopped; run again to resume)")
                )
            if copier.stop:
                break
        if options["json"]:
            self.emit_json(reports)
