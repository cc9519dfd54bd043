from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import connections

from django_mirror.capture.wal import slot
from django_mirror.config import conf
from django_mirror.management.commands._base import MirrorCommand
from django_mirror.streams import StreamError, get_stream
from django_mirror.targets import Target, get_target


class Command(MirrorCommand):
    help = (
        "Create the stream (and target tables of non-database targets) where missing; with "
        "CAPTURE 'wal', the source's publication and logical replication slot too."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Say what would be created.")
        self.add_json_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        stream = get_stream()
        by_target: dict[int, tuple[Target, list[Any]]] = {}
        for config in conf.configs():
            if config.target_alias is None and config.model is not None:
                target = get_target(config)
                by_target.setdefault(id(target), (target, []))[1].append(config.model)
        if options["dry_run"]:
            self.stdout.write(f"would create stream {stream.name!r} if missing")
            for target, models_ in by_target.values():
                labels = ", ".join(m._meta.label for m in models_)
                self.stdout.write(f"would set up {target.describe()} for {labels}")
            if conf.capture_mode() == "wal":
                self.stdout.write(
                    f"would create or update publication {slot.PUBLICATION!r} for "
                    f"{', '.join(slot.tables())} and slot {slot.SLOT!r} (pgoutput)"
                )
            return
        try:
            created = stream.create()
        except (StreamError, Exception) as exc:
            raise CommandError(f"could not create stream {stream.name!r}: {exc}") from exc
        tables: list[str] = []
        for target, models_ in by_target.values():
            try:
                tables += target.setup(models_)
            except Exception as exc:
                raise CommandError(f"could not set up {target.describe()}: {exc}") from exc
        wal = self._setup_wal()
        if options["json"]:
            summary: dict[str, Any] = {"stream": stream.name, "created": created, "tables": tables}
            if wal is not None:
                summary["wal"] = {
                    "publication": slot.PUBLICATION,
                    "publication_change": wal.publication or None,
                    "published_tables": wal.tables,
                    "slot": slot.SLOT,
                    "slot_created": wal.slot_created,
                    "replica_identity_fixes": wal.identity_fixes,
                }
            self.emit_json(summary)
            return
        if created:
            self.stdout.write(self.style.SUCCESS(f"created stream {stream.name!r}"))
        else:
            self.stdout.write(f"stream {stream.name!r} exists")
        for table in tables:
            self.stdout.write(self.style.SUCCESS(f"created table {table!r}"))
        if wal is not None:
            self._report_wal(wal)

    def _setup_wal(self) -> slot.SetupReport | None:
        """The publication and slot ``mirror_capture`` reads, where CAPTURE is "wal"."""
        if conf.capture_mode() != "wal":
            return None
        alias = conf.source_alias()
        if connections[alias].vendor != "postgresql":
            raise CommandError(f"CAPTURE 'wal' needs a PostgreSQL source; {alias!r} is not")
        return slot.setup(alias)

    def _report_wal(self, wal: slot.SetupReport) -> None:
        tables = ", ".join(wal.tables)
        if wal.publication:
            self.stdout.write(
                self.style.SUCCESS(f"{wal.publication} publication {slot.PUBLICATION!r}: {tables}")
            )
        else:
            self.stdout.write(f"publication {slot.PUBLICATION!r} holds {tables}")
        if wal.slot_created:
            self.stdout.write(self.style.SUCCESS(f"created replication slot {slot.SLOT!r}"))
        else:
            self.stdout.write(f"replication slot {slot.SLOT!r} exists")
        if wal.identity_fixes:
            self.stdout.write(
                self.style.WARNING(
                    "these tables have no key the log can name an updated or deleted row "
                    "by (PostgreSQL refuses their updates and deletes while published); run:"
                )
            )
            for fix in wal.identity_fixes:
                self.stdout.write(f"  {fix}")
