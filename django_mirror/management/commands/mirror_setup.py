from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from django_mirror.management.commands._base import MirrorCommand
from django_mirror.streams import StreamError, get_stream


class Command(MirrorCommand):
    help = "Create the stream (and target tables of non-database targets) where missing."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Say what would be created.")
        self.add_json_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        stream = get_stream()
        if options["dry_run"]:
            self.stdout.write(f"would create stream {stream.name!r} if missing")
            return
        try:
            created = stream.create()
        except (StreamError, Exception) as exc:
            raise CommandError(f"could not create stream {stream.name!r}: {exc}") from exc
        if options["json"]:
            self.emit_json({"stream": stream.name, "created": created})
        elif created:
            self.stdout.write(self.style.SUCCESS(f"created stream {stream.name!r}"))
        else:
            self.stdout.write(f"stream {stream.name!r} exists")
