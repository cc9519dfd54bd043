from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from django_mirror.config import conf
from django_mirror.management.commands._base import MirrorCommand
from django_mirror.streams import StreamError, get_stream
from django_mirror.targets import Target, get_target


class Command(MirrorCommand):
    help = "Create the stream (and target tables of non-database targets) where missing."

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
        if options["json"]:
            self.emit_json({"stream": stream.name, "created": created, "tables": tables})
            return
        if created:
            self.stdout.write(self.style.SUCCESS(f"created stream {stream.name!r}"))
        else:
            self.stdout.write(f"stream {stream.name!r} exists")
        for table in tables:
            self.stdout.write(self.style.SUCCESS(f"created table {table!r}"))
