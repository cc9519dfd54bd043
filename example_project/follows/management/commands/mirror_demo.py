"""``manage.py mirror_demo``: the six steps of docs/runbook.md on this project.

It starts from empty databases and a fresh stream and walks capture, copy, replay,
verify, mirror (live writes, shadowed reads) and promote, then rolls back to mirror,
writing mixed follows operations in between and printing ``mirror_verify``'s result
after each step. Then the same follows are mirrored a level up, through the service's
own ``FollowRepository`` into a DynamoDB store keyed by channel (docs/repositories.md).
Last it compares source and target row by row. It exits non-zero when any row or
channel differs, so it doubles as a smoke test.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections, models, transaction
from django.test.utils import override_settings

from django_mirror import paused, runtime
from django_mirror.config import conf
from django_mirror.models import DeadLetter, MetricWindow, MismatchRecord, OutboxBatch
from django_mirror.observability import stats
from django_mirror.pipeline import relay
from django_mirror.repositories import get as get_repository
from django_mirror.repositories.registry import RepositoryConfig, config_for
from django_mirror.shadow import get_pool, shadow_reads
from django_mirror.streams import get_stream
from django_mirror.targets import get_target
from follows.models import Channel, Follow, Tag, User
from follows.repositories import AlreadyFollowing, DynamoFollowRepository, FollowRepository
from follows.workload import Workload

COMPARED: list[type[models.Model]] = [User, Tag, Channel, Channel.tags.through, Follow]
#: The models the demo moves through the phases, together.
MOVED: list[type[models.Model]] = [User, Tag, Channel, Follow]
#: The repository interface the demo mirrors, by the name its calls and records carry.
INTERFACE = "follows.repositories.FollowRepository"
#: Calls the repository step makes in each phase.
CALLS = 150


def table_rows(model: type[models.Model], alias: str) -> dict[Any, tuple[Any, ...]]:
    """Every row of ``model`` on ``alias`` as ``{pk: (all concrete field values)}``."""
    names = [f.attname for f in model._meta.concrete_fields]
    qs = models.QuerySet(model=model, using=alias).order_by().values_list(*names)
    pk_index = names.index(model._meta.pk.attname)
    return {row[pk_index]: row for row in qs}


def target_rows(model: type[models.Model], config: conf.ModelConfig) -> dict[Any, tuple[Any, ...]]:
    """The same from the model's target: a database alias, or a store read back by scan."""
    if config.target_alias:
        return table_rows(model, config.target_alias)
    names = [f.attname for f in model._meta.concrete_fields]
    rows = get_target(config).scan(model)
    return {row[model._meta.pk.attname]: tuple(row[n] for n in names) for row in rows}


def sql_follows() -> dict[int, dict[int, bool]]:
    """Every channel's followers in the ``Follow`` table: ``{channel: {user: notifications}}``."""
    follows: dict[int, dict[int, bool]] = {}
    rows = Follow.objects.order_by().values_list("channel_id", "user_id", "notifications")
    for channel_id, user_id, notifications in rows:
        follows.setdefault(channel_id, {})[user_id] = notifications
    return follows


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
            # The background threads (relay, phases, figures) may hold connections to
            # an earlier run's files: stopped first, they cannot read it after the
            # unlink (the old outbox shipped into this run's stream).
            runtime.stop()
            connections.close_all()
            for alias in [source, *targets]:
                connection = connections[alias]
                if connection.vendor == "sqlite":
                    # Its own file: start from nothing, whatever an earlier run (with
                    # other targets, so other tables) left in it.
                    connection.close()
                    Path(connection.settings_dict["NAME"]).unlink(missing_ok=True)
                call_command("migrate", database=alias, verbosity=0, interactive=False)
                call_command("flush", database=alias, verbosity=0, interactive=False)
            runtime.start()

        with self.kinesis() as mirror, self.repository_table(mirror) as table:
            with override_settings(DJANGO_MIRROR=mirror, FOLLOW_REPOSITORY_DYNAMODB=table):
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
        embedded = contextlib.ExitStack()  # the moto server, when one is started here
        if not options.get("endpoint_url"):
            from django_mirror.testing import moto_server

            logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
            options["endpoint_url"] = embedded.enter_context(moto_server())
            where = "embedded moto server"
            for model_options in mirror["MODELS"].values():
                target = model_options.get("target")
                if isinstance(target, dict) and not target["OPTIONS"].get("endpoint_url"):
                    target["OPTIONS"]["endpoint_url"] = options["endpoint_url"]
        else:
            options["stream_name"] = f"{options['stream_name']}-demo-{uuid.uuid4().hex[:8]}"
            where = "AWS_ENDPOINT_URL"
        self.stdout.write(
            f"stream {options['stream_name']!r} at {options['endpoint_url']} ({where})"
        )
        with embedded:
            yield mirror

    @contextmanager
    def repository_table(self, mirror: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """``FOLLOW_REPOSITORY_DYNAMODB`` beside the stream: on the embedded moto server,
        or, on an external endpoint, a table of this run's own, deleted at the end."""
        table = dict(settings.FOLLOW_REPOSITORY_DYNAMODB)
        ours = bool(table.get("endpoint_url"))
        if ours:
            table["table_name"] = f"{table['table_name']}-demo-{uuid.uuid4().hex[:8]}"
        else:
            table["endpoint_url"] = mirror["STREAM"]["OPTIONS"]["endpoint_url"]
        try:
            yield table
        finally:
            if ours:
                try:
                    DynamoFollowRepository(**table).client.delete_table(
                        TableName=table["table_name"]
                    )
                except Exception as exc:  # best effort, as for the stream
                    self.stderr.write(f"could not delete table {table['table_name']!r}: {exc}")

    # --- the pipeline -----------------------------------------------------------------------

    def pipeline(self, operations: int, seed: int, source: str) -> None:
        """The six steps of docs/runbook.md, then a rollback, with verify after each."""
        stream = get_stream()
        call_command("mirror_setup", stdout=self.stdout)
        labels = [m._meta.label for m in MOVED]
        # The router moves only models whose target is a database, and models that
        # cascade into each other move together: with the follows in DynamoDB, none moves.
        stay = [label for label in labels if not conf.config_for_label(label).target_alias]  # type: ignore[union-attr]
        promotable = [] if stay else labels
        share = max(operations // 4, 1)
        workload = Workload(seed)
        try:
            with self.step("1 capture", f"{share} operations, seed {seed}") as note:
                with paused():  # rows that existed before capture was switched on
                    workload.seed()
                workload.run(share, lambda n: self.stdout.write(f"  {n} operations"))
                seeded = workload.done.pop("seed")
                note(
                    f"{seeded} rows seeded before capture, then {share} operations "
                    f"({workload.rolled_back} rolled back on purpose)"
                )

            with self.step("2 copy", "mirror_copy: the rows that existed before capture"):
                call_command("mirror_copy", stdout=self.stdout)

            with self.step("3 replay", "mirror_relay --once, mirror_replay --until-caught-up"):
                self.catch_up(source)

            with self.step("4 verify", "mirror_verify: checksums, then row by row"):
                self.verify()

            with self.step("5 mirror", "live writes to the target, every read shadowed") as note:
                self.move_group("mirror", "demo: step 5")
                with shadow_reads(rate=1.0):
                    workload.run(share, lambda n: None)
                    reads = self.read_followers(workload, 200)
                assert get_pool().wait_idle(120), "shadow reads did not finish"
                self.catch_up(source)
                confirmed = MismatchRecord.objects.using(source).filter(kind="read").count()
                note(
                    f"{share} operations applied live ({self.write_mismatches(source)} write "
                    f"mismatches); {reads} reads shadowed, {confirmed} mismatches"
                )
                self.verify()

            with self.step("6 promote", "the new store takes reads and writes") as note:
                if promotable:
                    self.move_group("promoted", "demo: step 6")
                if stay:
                    note(
                        f"all stay in mirror: {', '.join(stay)} goes to a store that is not a "
                        "database, and the models referring to each other move together"
                    )
                workload.run(share, lambda n: None)
                outbox = OutboxBatch.objects.using(self.target_alias()).count()
                self.catch_up(source)
                if not stay:
                    note(
                        f"{share} operations written to the new store first ({outbox} outbox "
                        f"batches there) and mirrored back live "
                        f"({self.write_mismatches(source)} write mismatches)"
                    )
                self.verify()

            with self.step("rollback", "back to mirror: the old store is primary again") as note:
                if promotable:
                    self.move_group("mirror", "demo: rollback")
                workload.run(max(share // 4, 1), lambda n: None)
                self.catch_up(source)
                note(f"{self.write_mismatches(source)} write mismatches in all")
                self.verify()

            with self.step(
                "repository", "FollowRepository: the SQL store mirrored to DynamoDB by channel"
            ) as note:
                channels_differing = self.repository(source, seed, note)

            with self.step("compare", "every row of every mirrored table, both directions"):
                differing = self.compare(source)
        finally:
            self.delete_stream_if_ours(stream)

        writes = self.write_mismatches(source)
        if writes:
            raise CommandError(f"{writes} live writes failed on the other store (see the admin)")
        dead = DeadLetter.objects.using(source).count()
        if dead:
            self.stdout.write(self.style.WARNING(f"{dead} dead letters (see the admin)"))
        if differing or dead:
            raise CommandError(f"{differing} rows differ between source and target")
        if channels_differing:
            raise CommandError(f"{channels_differing} channels differ between SQL and DynamoDB")
        self.stdout.write(self.style.SUCCESS("OK: 0 rows differ between source and target"))

    def move_group(self, phase: str, reason: str) -> None:
        """``mirror_phase --group``: the follows' models cascade into each other (a
        deleted user takes its channels and follows), so they change phase as one."""
        call_command(
            "mirror_phase", "--group", MOVED[0]._meta.label, phase, reason=reason, verbosity=0
        )

    @staticmethod
    def write_mismatches(source: str) -> int:
        """Live writes of the moved models the other store refused so far (replay applies
        them later); the repository step counts its own."""
        labels = [m._meta.label for m in COMPARED]
        return MismatchRecord.objects.using(source).filter(kind="write", model__in=labels).count()

    # --- the repository step ---------------------------------------------------------------

    @contextmanager
    def repository_phase(self, phase: str) -> Iterator[RepositoryConfig]:
        """The repository in ``phase``: a repository has no run-time phase (no
        ``MirrorState``), its settings decide, so this overrides them for the block."""
        mirror = copy.deepcopy(settings.DJANGO_MIRROR)
        mirror["REPOSITORIES"][INTERFACE]["phase"] = phase
        with override_settings(DJANGO_MIRROR=mirror):
            config = config_for(INTERFACE)
            assert config is not None and config.phase == phase
            yield config

    def repository(self, source: str, seed: int, note: Any) -> int:
        """Copy the follows into the DynamoDB store; make calls in phase capture and
        replay them; make calls in phase mirror (live) with their reads shadowed; then
        compare every channel's followers in both stores. Returns the channels differing."""
        rng = random.Random(seed)
        # A few channels and users, so follows collide with existing ones and unfollows
        # miss: the tolerated AlreadyFollowing and False outcomes are mirrored too.
        users = list(User.objects.order_by("pk").values_list("pk", flat=True))
        channels = list(Channel.objects.order_by("pk").values_list("pk", flat=True))
        users, channels = (
            rng.sample(users, min(40, len(users))),
            rng.sample(channels, min(12, len(channels))),
        )
        mismatches = MismatchRecord.objects.using(source).filter(model=INTERFACE)

        with self.repository_phase("capture") as config:
            dynamo: DynamoFollowRepository = config.targets()["dynamodb"]
            created = dynamo.setup()
            existing = sql_follows()
            copied = dynamo.copy(existing)
            note(
                f"{'created' if created else 'found'} table {dynamo.table_name!r}; copied "
                f"{copied} channels ({sum(map(len, existing.values()))} follows) into it"
            )
            outcomes = self.repository_calls(source, rng, users, channels, CALLS)
            self.catch_up(source)
            note(
                f"phase capture: {CALLS} calls ({outcomes}), replayed on dynamodb "
                f"({mismatches.count()} outcomes differed)"
            )

        with self.repository_phase("mirror") as config:
            outcomes = self.repository_calls(source, rng, users, channels, CALLS)
            repo = get_repository(FollowRepository)
            with shadow_reads(rate=1.0):
                for channel_id in channels * 10:
                    repo.followers(channel_id)
                    repo.follower_count(channel_id)
            assert get_pool().wait_idle(120), "shadow reads did not finish"
            note(f"phase mirror: {CALLS} calls ({outcomes}), made on dynamodb too")
            live = [mismatches.filter(kind=kind).count() for kind in ("write", "read")]
            before = mismatches.count()
            self.catch_up(source)
            twice = mismatches.count() - before

        stats.flush()
        figures: dict[str, int] = {}
        for window in MetricWindow.objects.using(source).filter(model=INTERFACE):
            for name, count in window.counts.items():
                figures[name] = figures.get(name, 0) + count
        note(
            f"{figures.get('captured', 0)} calls recorded, {figures.get('replayed', 0)} "
            f"replayed; {figures.get('write.applied', 0)} writes mirrored live, "
            f"{figures.get('read.compared', 0)} reads compared "
            f"({figures.get('read.match', 0)} matched)"
        )
        note(f"live mismatches: {live[0]} write, {live[1]} read")
        if twice:
            # See "Known limitations" in docs/repositories.md.
            note(
                f"replay ran the {CALLS} calls made live a second time on dynamodb: "
                f"{twice} outcomes differed from the recorded ones"
            )
        expected = sql_follows()
        held = dynamo.snapshot()
        compared = expected.keys() | held.keys()
        # Each channel's followers with their notification flag, and the item's count.
        differing = sum(
            1
            for channel_id in compared
            if held.get(channel_id, ({}, 0))
            != (expected.get(channel_id, {}), len(expected.get(channel_id, {})))
        )
        note(
            f"followers per channel, SQL vs DynamoDB: {len(compared)} channels, "
            f"{differing} channels differ"
        )
        return differing

    def repository_calls(
        self, source: str, rng: random.Random, users: list[int], channels: list[int], count: int
    ) -> str:
        """``count`` follows and unfollows through the mirrored repository, each in a
        transaction with its call event; returns what the source answered."""
        repo = get_repository(FollowRepository)
        answers: Counter[str] = Counter()
        for _ in range(count):
            user_id, channel_id = rng.choice(users), rng.choice(channels)
            # The source's writes (on the follows' write alias, here the source) and the
            # call's outbox row (always on SOURCE) commit together: a call is recorded if
            # and only if its write is. The tolerated error is caught inside the block,
            # else it would roll back the write and the recorded call with it.
            with transaction.atomic(using=source):
                try:
                    if rng.random() < 0.6:
                        repo.follow(user_id, channel_id, notifications=rng.random() < 0.7)
                        answers["followed"] += 1
                    elif repo.unfollow(user_id, channel_id):
                        answers["unfollowed"] += 1
                    else:
                        answers["not following"] += 1
                except AlreadyFollowing:
                    answers["already following"] += 1
        return ", ".join(f"{n} {what}" for what, n in sorted(answers.items()))

    def target_alias(self) -> str:
        config = conf.model_config(User)
        assert config is not None and config.target_alias
        return config.target_alias

    def catch_up(self, source: str) -> None:
        """Every outbox shipped, then replay until no shard lags. The after-commit thread
        finishes first: two relays shipping at once may put one partition's calls on the
        stream out of order (docs/repositories.md, "Known limitations")."""
        relay.shipper.wait_idle(60)
        deadline = time.monotonic() + 60
        while True:
            call_command("mirror_relay", once=True, verbosity=0)
            if relay.backlog() == 0:
                break
            if time.monotonic() > deadline:
                raise CommandError("the outbox did not drain within 60 s")
            time.sleep(0.2)
        call_command("mirror_replay", until_caught_up=True, verbosity=0)

    def verify(self) -> None:
        """mirror_verify of every mirrored model; its line per model is the step's result."""
        call_command("mirror_verify", recheck_delay=0, stdout=self.stdout)

    def read_followers(self, workload: Workload, count: int) -> int:
        """Reads the service makes: a channel's followers, their count, one follow."""
        rng = random.Random(7)
        for _ in range(count):
            channel_id = rng.choice(workload.channels)
            list(Follow.objects.filter(channel_id=channel_id).order_by("pk")[:20])
            Follow.objects.filter(channel_id=channel_id).count()
        return count * 2

    def compare(self, source: str) -> int:
        header = f"  {'model':<24} {'source':>8} {'target':>8} {'differ':>8}"
        self.stdout.write(header)
        self.stdout.write("  " + "-" * (len(header) - 2))
        totals = [0, 0, 0]
        for model in COMPARED:
            config = conf.model_config(model)
            assert config is not None, model
            src = table_rows(model, source)
            dst = target_rows(model, config)
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
