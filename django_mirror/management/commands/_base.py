"""What every django-mirror command shares: model labels, ``--json``, clean failures."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connections

from django_mirror.config import conf
from django_mirror.streams import StreamError


@contextmanager
def stopping_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """Call ``stop`` on SIGINT/SIGTERM while the block runs, so a long-running command
    finishes its batch and checkpoints; the previous handlers come back afterwards.
    Outside the main thread (``call_command`` from a worker) signals are left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: stop())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class MirrorCommand(BaseCommand):
    requires_system_checks = ["models"]

    def execute(self, *args: Any, **options: Any) -> Any:
        """What a user can cause or meet (a missing or unreachable stream, a database
        that is down) ends as a ``CommandError`` of one line, never a traceback."""
        try:
            return super().execute(*args, **options)
        except CommandError as exc:
            failure: Exception = exc
            returncode = exc.returncode
        except (StreamError, DatabaseError) as exc:
            failure, returncode = exc, 1
        raise CommandError(" ".join(str(failure).split()), returncode=returncode) from failure

    def database_alias(self, alias: str) -> str:
        """A ``--database`` value that names a ``DATABASES`` alias, else a ``CommandError``."""
        if alias not in connections:
            raise CommandError(
                f"unknown database {alias!r} (DATABASES has: {', '.join(connections)})"
            )
        return alias

    def add_models_argument(self, parser: CommandParser, verb: str) -> None:
        """Positional ``app_label.Model`` labels, as ``mirror_copy`` and ``mirror_verify`` take."""
        parser.add_argument(
            "models",
            nargs="*",
            metavar="app_label.Model",
            help=f"Models to {verb} (default: every mirrored model).",
        )

    def add_model_filter_argument(self, parser: CommandParser, help: str) -> None:
        """A repeatable ``--model app_label.Model``, as ``mirror_replay`` and ``mirror_status`` take."""
        parser.add_argument(
            "--model", action="append", dest="models", metavar="app_label.Model", help=help
        )

    def add_json_argument(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print a JSON summary.")

    def resolve_models(self, labels: list[str] | None) -> list[conf.ModelConfig]:
        """Configs for ``app_label.Model`` labels (all mirrored models when none given);
        copy and verify also take the M2M tables' own labels (``config.labels``)."""
        configs = {c.label.lower(): c for c in conf.configs() if c.owner is None}
        unknown = [label for label in labels or () if label.lower() not in configs]
        if unknown:
            raise CommandError(
                f"not mirrored: {', '.join(unknown)} (mirrored: {', '.join(sorted(configs)) or 'none'})"
            )
        return [configs[label.lower()] for label in labels] if labels else list(configs.values())

    def emit_json(self, data: Any) -> None:
        self.stdout.write(json.dumps(data, indent=2, default=str))
