from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError
from django.utils import timezone

from django_mirror.config import conf, labels
from django_mirror.management.commands._base import MirrorCommand
from django_mirror.models import VerifyRun
from django_mirror.pipeline.verify import Verifier, VerifyStats


class Command(MirrorCommand):
    help = "Compare mirrored models in source and target; exit 1 when differences remain."

    def add_arguments(self, parser: CommandParser) -> None:
        self.add_models_argument(parser, "verify")
        parser.add_argument("--chunk-size", type=int, default=1000, help="Rows per checksum range.")
        parser.add_argument(
            "--recheck-delay",
            type=float,
            default=5.0,
            help="Seconds to wait before re-checking differences (replay lag is not a difference).",
        )
        parser.add_argument(
            "--repair", action="store_true", help="Rewrite differing target rows from the source."
        )
        parser.add_argument(
            "--no-record", action="store_true", help="Do not store differences as mismatch records."
        )
        self.add_json_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["chunk_size"] < 1:
            raise CommandError("--chunk-size must be at least 1")
        try:
            configs = labels.tables(options["models"])
        except labels.UnknownLabels as exc:
            raise CommandError(str(exc)) from exc
        verbosity = options["verbosity"]
        reports: list[dict[str, Any]] = []
        remaining = 0
        for config in configs:

            def progress(stats: VerifyStats) -> None:
                if verbosity >= 2 and not options["json"]:
                    self.stdout.write(f"{stats.model}: {stats.rows} rows in {stats.chunks} chunks")

            verifier = Verifier(
                config,
                chunk_size=options["chunk_size"],
                recheck_delay=options["recheck_delay"],
                progress=progress,
            )
            using = conf.source_alias()
            try:
                run = VerifyRun.objects.using(using).create(model=config.label)
                stats = verifier.run()
                if stats.differences and not options["no_record"]:
                    verifier.record()
                if options["repair"]:
                    verifier.repair()
                # What moving to phase "mirror" checks: a recent run that left nothing.
                run.finished_at = timezone.now()
                run.rows = stats.rows
                run.differences = len(stats.differences)
                run.repaired = stats.repaired
                run.save(using=using)
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
            except (DatabaseError, ClientError, BotoCoreError) as exc:
                raise CommandError(f"verify of {config.label} failed: {exc}") from exc
            remaining += len(stats.differences)
            reports.append(stats.as_dict())
            if not options["json"] and verbosity >= 1:
                self._describe(stats, options["repair"])
        if options["json"]:
            self.emit_json(reports)
        if remaining:
            raise CommandError(f"{remaining} differing rows remain", returncode=1)

    def _describe(self, stats: VerifyStats, repaired: bool) -> None:
        rate = stats.rows / max(stats.elapsed, 1e-9)
        line = (
            f"{stats.model}: {stats.rows} rows, {len(stats.differences)} differ "
            f"({stats.suspected} suspected, {stats.method} checksums, {rate:,.0f} rows/s)"
        )
        if repaired:
            line += f"; {stats.repaired} repaired"
        style = self.style.SUCCESS if not stats.differences else self.style.ERROR
        self.stdout.write(style(line))
        for difference in stats.differences[:20]:
            fields = ", ".join(difference.fields) if difference.fields else ""
            self.stdout.write(f"  {difference.kind:8} pk={difference.pk} {fields}")
