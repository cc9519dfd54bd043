from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError, connections

from django_mirror.capture.wal import slot
from django_mirror.config import conf
from django_mirror.management.commands._base import MirrorCommand
from django_mirror.streams import StreamError, get_stream
from django_mirror.targets import Target, get_target


class Command(MirrorCommand):
    help = (
        "Create the stream (and target tables of non-database targets) where missing; with "
        "CAPTURE 'wal', the publication and logical replication slot of the source (and of "
        "each PostgreSQL database target) too."
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
            for alias in self._wal_aliases():
                self.stdout.write(
                    f"would create or update publication {slot.PUBLICATION!r} on {alias!r} "
                    f"for {', '.join(slot.tables(alias))} and slot {slot.slot_name(alias)!r} "
                    "(pgoutput)"
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
        wal = {}
        for alias in self._wal_aliases():
            try:
                wal[alias] = slot.setup(alias)
            except DatabaseError as exc:
                raise CommandError(
                    f"could not set up logical decoding on {alias!r}: {exc}".strip()
                ) from exc
        if options["json"]:
            summary: dict[str, Any] = {"stream": stream.name, "created": created, "tables": tables}
            if wal:
                summary["wal"] = [
                    {
                        "alias": alias,
                        "publication": slot.PUBLICATION,
                        "publication_change": report.publication or None,
                        "published_tables": report.tables,
                        "slot": slot.slot_name(alias),
                        "slot_created": report.slot_created,
                        "replica_identity_fixes": report.identity_fixes,
                    }
                    for alias, report in wal.items()
                ]
            self.emit_json(summary)
            return
        if created:
            self.stdout.write(self.style.SUCCESS(f"created stream {stream.name!r}"))
        else:
            self.stdout.write(f"stream {stream.name!r} exists")
        for table in tables:
            self.stdout.write(self.style.SUCCESS(f"created table {table!r}"))
        for alias, report in wal.items():
            self._report_wal(alias, report)

    def _wal_aliases(self) -> list[str]:
        """Where ``mirror_capture`` reads the log, when CAPTURE is "wal": the source first,
        then each PostgreSQL database target (where a promoted model is written)."""
        if conf.capture_mode() != "wal":
            return []
        source = conf.source_alias()
        if connections[source].vendor != "postgresql":
            raise CommandError(f"CAPTURE 'wal' needs a PostgreSQL source; {source!r} is not")
        return slot.captured_aliases()

    def _report_wal(self, alias: str, wal: slot.SetupReport) -> None:
        tables = ", ".join(wal.tables)
        where = f"on {alias!r}"
        if wal.publication:
            self.stdout.write(
                self.style.SUCCESS(
                    f"{wal.publication} publication {slot.PUBLICATION!r} {where}: {tables}"
                )
            )
        else:
            self.stdout.write(f"publication {slot.PUBLICATION!r} {where} holds {tables}")
        name = slot.slot_name(alias)
        if wal.slot_created:
            self.stdout.write(self.style.SUCCESS(f"created replication slot {name!r} {where}"))
        else:
            self.stdout.write(f"replication slot {name!r} {where} exists")
        if wal.identity_fixes:
            self.stdout.write(
                self.style.WARNING(
                    "these tables have no key the log can name an updated or deleted row "
                    "by (PostgreSQL refuses their updates and deletes while published); run:"
                )
            )
            for fix in wal.identity_fixes:
                self.stdout.write(f"  {fix}")
