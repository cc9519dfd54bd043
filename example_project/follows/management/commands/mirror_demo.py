"""``manage.py mirror_demo``: the whole capture -> relay -> replay pipeline on this project.

It starts from empty databases and a fresh stream, writes a few thousand mixed
follows operations, ships and replays them, and compares source and target row by
row. It exits non-zero when any row differs, so it doubles as a smoke test.
"""

from __future__ import annotations

import copy
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import models
from django.test.utils import override_settings

from django_mirror import conf, paused, relay
from django_mirror.models import DeadLetter
from django_mirror.streams import get_stream
from follows.models import Channel, Follow, Tag, User
from follows.workload import Workload

COMPARED: list[type[models.Model]] = [User, Tag, Channel, Channel.tags.through, Follow]


def table_rows(model: type[models.Model], alias: str) -> dict[Any, tuple[Any, ...]]:
    """Every row of ``model`` on ``alias`` as ``{pk: (all concrete field values)}``."""
    names = [f.attname for f in model._meta.concrete_fields]
    qs = models.QuerySet(model=model, using=alias).order_by().values_list(*names)
    pk_index = names.index(model._meta.pk.attname)
    return {row[pk_index]: row for row in qs}


def count_differences(source: dict[Any, tuple], target: dict[Any, tuple]) -> int:
    """Rows missing on either side plus rows whose values differ in any field."""
    missing = source.keys() ^ target.keys()
    changed = sum(1 for pk in source.keys() & target.keys() if source[pk] != target[pk])
    return len(missing) + changed


class Command(BaseCommand):
    help = (
        "Reset both databases and the stream, make a few thousand mixed writes, relay, "
        "replay until caught up, and compare source and target row by row."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--operations", type=int, default=3000, help="Random operations.")
        parser.add_argument("--seed", type=int, default=2024, help="Random seed of the workload.")

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.monotonic()
        source = conf.source_alias()
        targets = sorted(
            {c.target_alias for c in conf.mirrored_models().values() if c.target_alias}
        )
        with self.step("reset", f"migrate and flush {', '.join([source, *targets])}"):
            for alias in [source, *targets]:
                call_command("migrate", database=alias, verbosity=0, interactive=False)
                call_command("flush", database=alias, verbosity=0, interactive=False)

        with self.kinesis() as mirror:
            with override_settings(DJANGO_MIRROR=mirror):
                self.pipeline(options["operations"], options["seed"], source)
        self.stdout.write(f"demo finished in {time.monotonic() - started:.1f} s")

    # --- the stream -----------------------------------------------------------------------

    @contextmanager
    def kinesis(self) -> Iterator[dict[str, Any]]:
        """``DJANGO_MIRROR`` pointing at a fresh stream: an embedded moto server by default.

        With ``AWS_ENDPOINT_URL`` set (localstack, a shared moto) the run gets its own
        stream name, deleted at the end, so runs never see each other's records.
        """
        mirror = copy.deepcopy(settings.DJANGO_MIRROR)
        options = mirror["STREAM"]["OPTIONS"]
        server = None
        if not options.get("endpoint_url"):
            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            options["endpoint_url"] = f"http://{host}:{port}"
            where = "embedded moto server"
        else:
            options["stream_name"] = f"{options['stream_name']}-demo-{uuid.uuid4().hex[:8]}"
            where = "AWS_ENDPOINT_URL"
        self.stdout.write(
            f"stream {options['stream_name']!r} at {options['endpoint_url']} ({where})"
        )
        try:
            yield mirror
        finally:
            if server is not None:
                server.stop()

    # --- the pipeline -----------------------------------------------------------------------

    def pipeline(self, operations: int, seed: int, source: str) -> None:
        stream = get_stream()
        call_command("mirror_setup", stdout=self.stdout)
        try:
            with self.step("capture", f"{operations} operations, seed {seed}") as note:
                workload = Workload(seed)
                with paused():  # rows that existed before capture was switched on
                    workload.seed()
                workload.run(operations, lambda n: self.stdout.write(f"  {n} operations"))
                seeded = workload.done.pop("seed")
                note(
                    f"{seeded} rows seeded before capture, then {operations} operations "
                    f"({workload.rolled_back} rolled back on purpose); "
                    f"{relay.backlog(source)} events left in the outbox, the rest already "
                    "shipped by the after-commit thread"
                )
                self.stdout.write(
                    "  " + ", ".join(f"{k} {v}" for k, v in sorted(workload.done.items()))
                )

            with self.step("relay", "mirror_relay --once"):
                # The after-commit thread may hold a batch it is shipping; once the
                # outbox is empty every event has been acknowledged by the stream.
                deadline = time.monotonic() + 60
                while True:
                    call_command("mirror_relay", once=True, stdout=self.stdout)
                    if relay.backlog(source) == 0:
                        break
                    if time.monotonic() > deadline:
                        raise CommandError("the outbox did not drain within 60 s")
                    time.sleep(0.2)

            with self.step("replay", "mirror_replay --until-caught-up"):
                call_command("mirror_replay", until_caught_up=True, stdout=self.stdout)

            with self.step("copy", "mirror_copy: the rows that existed before capture"):
                call_command("mirror_copy", stdout=self.stdout)

            with self.step("verify", "mirror_verify: checksums, then row by row"):
                call_command("mirror_verify", recheck_delay=0, stdout=self.stdout)

            with self.step("compare", "every row of every mirrored table, both directions"):
                differing = self.compare(source)
        finally:
            self.delete_stream_if_ours(stream)

        dead = DeadLetter.objects.using(source).count()
        if dead:
            self.stdout.write(self.style.WARNING(f"{dead} dead letters (see the admin)"))
        if differing or dead:
            raise CommandError(f"{differing} rows differ between source and target")
        self.stdout.write(self.style.SUCCESS("OK: 0 rows differ between source and target"))

    def compare(self, source: str) -> int:
        header = f"  {'model':<24} {'source':>8} {'target':>8} {'differ':>8}"
        self.stdout.write(header)
        self.stdout.write("  " + "-" * (len(header) - 2))
        totals = [0, 0, 0]
        for model in COMPARED:
            config = conf.model_config(model)
            assert config is not None and config.target_alias, model
            src = table_rows(model, source)
            dst = table_rows(model, config.target_alias)
            counts = [len(src), len(dst), count_differences(src, dst)]
            totals = [a + b for a, b in zip(totals, counts, strict=True)]
            self.stdout.write(
                f"  {model._meta.label:<24} {counts[0]:>8} {counts[1]:>8} {counts[2]:>8}"
            )
        self.stdout.write("  " + "-" * (len(header) - 2))
        self.stdout.write(f"  {'total':<24} {totals[0]:>8} {totals[1]:>8} {totals[2]:>8}")
        return totals[2]

    def delete_stream_if_ours(self, stream: Any) -> None:
        """Remove the per-run stream made on an external endpoint (moto's dies with it)."""
        if "-demo-" not in stream.name:
            return
        try:
            stream.client.delete_stream(StreamName=stream.name, EnforceConsumerDeletion=True)
        except Exception as exc:  # best effort: the demo's result does not depend on it
            self.stderr.write(f"could not delete stream {stream.name!r}: {exc}")

    # --- output ---------------------------------------------------------------------------

    @contextmanager
    def step(self, name: str, what: str) -> Iterator[Any]:
        """Print a step's name, then its duration and any note the step leaves."""
        notes: list[str] = []
        self.stdout.write(self.style.MIGRATE_HEADING(f"== {name}: {what}"))
        started = time.monotonic()
        yield notes.append
        for text in notes:
            self.stdout.write(f"  {text}")
        self.stdout.write(f"  {name} took {time.monotonic() - started:.2f} s")
