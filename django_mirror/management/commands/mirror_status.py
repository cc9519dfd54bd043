from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError
from django.db.models import Count
from django.utils import timezone

from django_mirror.capture.wal import slot
from django_mirror.config import conf, graph
from django_mirror.management.commands._base import MirrorCommand
from django_mirror.models import (
    DeadLetter,
    MirrorState,
    MismatchRecord,
    ShardCheckpoint,
)
from django_mirror.pipeline import relay
from django_mirror.pipeline.checkpoints import owner_process
from django_mirror.pipeline.verify import last_runs


class Command(MirrorCommand):
    help = "Show per model its phase, relay backlog, dead letters and mismatches, and replay lag."

    def add_arguments(self, parser: CommandParser) -> None:
        self.add_model_filter_argument(parser, "Only this model (repeatable).")
        self.add_json_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        configs = self.resolve_models(options["models"])
        using = conf.source_alias()
        try:
            report = self._report(configs, using)
        except DatabaseError as exc:
            raise CommandError(f"cannot read django-mirror's tables on {using!r}: {exc}") from exc
        lags = slot.lags()  # one query a slot read, and none at all for ORM capture
        if lags:
            report["capture"] = [lag.as_dict() for lag in lags]
        if options["json"]:
            self.emit_json(report)
            return
        self.stdout.write(
            f"{'model':<32} {'phase':<9} {'target':<12} {'backlog':>8} {'dead':>6} "
            f"{'mismatch':>9}  last verify"
        )
        for row in report["models"]:
            last = row["last_verify"]
            verify = (
                "never"
                if last is None
                else f"{last['finished_at']:%Y-%m-%d %H:%M} "
                + ("clean" if last["clean"] else f"{last['differences']} differences")
            )
            self.stdout.write(
                f"{row['model']:<32} {row['phase']:<9} {str(row['target']):<12} "
                f"{row['backlog']:>8} {row['dead_letters']:>6} {row['mismatches']:>9}  {verify}"
            )
            if options["verbosity"] >= 2:
                self.stdout.write(f"  phase from {row['phase_source']}")
        for group in report["groups"]:
            phases = sorted(set(group["phases"].values()))
            self.stdout.write(
                f"group {', '.join(group['members'])}: "
                + (f"{phases[0]}" if len(phases) == 1 else f"SPLIT ({', '.join(phases)})")
            )
        self.stdout.write(f"relay backlog: {report['backlog']} events")
        for lag in lags:
            where = "" if lag.alias == using else f" ({lag.alias})"
            self.stdout.write(f"slot lag{where}: {lag.text()}")
            if lag.over_limit:
                self.stdout.write(
                    f"WARNING: the replication slot {lag.slot_name!r} retains more WAL than "
                    f"DJANGO_MIRROR['WAL']['MAX_RETAINED_BYTES'] ({lag.limit}): "
                    "run mirror_capture (django_mirror.W010)"
                )
        now = timezone.now()
        for shard in report["shards"]:
            self.stdout.write(
                f"replay {shard['consumer']} {shard['shard_id']}: "
                f"{'done' if shard['finished'] else str(shard['millis_behind']) + ' ms behind'}"
                f" (lease: {self._lease(shard, now)})"
            )

    @staticmethod
    def _lease(shard: dict[str, Any], now: dt.datetime) -> str:
        """Which process (host:pid) holds the shard and until when, so an operator can
        find the replay that is reading it."""
        owner, expires = shard["lease_owner"], shard["lease_expires"]
        if not owner or expires is None:
            return "free"
        until = f"{expires.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC"
        if expires < now:
            return f"free, {owner_process(owner)}'s lapsed at {until}"
        return f"{owner_process(owner)} until {until}"

    def _report(self, configs: list[conf.ModelConfig], using: str) -> dict[str, Any]:
        def counts(qs: Any) -> dict[str, int]:
            return {
                row["model"].lower(): row["n"] for row in qs.values("model").annotate(n=Count("id"))
            }

        backlog = relay.backlog_by_model()
        dead = counts(DeadLetter.objects.using(using).filter(resolved_at__isnull=True))
        open_mismatches = (
            MismatchRecord.objects.using(using)
            .filter(dismissed_at__isnull=True)
            .exclude(status="resolved")
        )
        by_kind: dict[str, dict[str, int]] = {}
        for row in open_mismatches.values("model", "kind").annotate(n=Count("id")):
            by_kind.setdefault(row["model"].lower(), {})[row["kind"]] = row["n"]
        states = {s.model.lower(): s for s in MirrorState.objects.using(using)}
        verified = last_runs()
        models = []
        for config in configs:
            key = config.label.lower()
            state = states.get(key)
            last = verified.get(key)
            models.append(
                {
                    "model": config.label,
                    "phase": config.phase,
                    "phase_source": (
                        f"set by {state.changed_by or '?'} at {state.changed_at:%Y-%m-%d %H:%M}"
                        + (" (forced)" if state.forced else "")
                        if state is not None
                        else "settings"
                    ),
                    "target": config.target if isinstance(config.target, str) else "custom",
                    "backlog": backlog.get(key, 0),
                    "dead_letters": dead.get(key, 0),
                    "mismatches": sum(by_kind.get(key, {}).values()),
                    "mismatches_by_kind": by_kind.get(key, {}),
                    "last_verify": None
                    if last is None
                    else {
                        "finished_at": last.finished_at,
                        "rows": last.rows,
                        "differences": last.differences,
                        "clean": last.clean,
                    },
                }
            )
        shards = list(
            ShardCheckpoint.objects.using(using).values(
                "consumer",
                "stream",
                "shard_id",
                "sequence_number",
                "finished",
                "millis_behind",
                "lease_owner",
                "lease_expires",
                "updated_at",
            )
        )
        chosen = {c.label for c in configs}
        groups = [
            {"members": list(g.members), "phases": g.phases(), "ties": [str(t) for t in g.ties]}
            for g in graph.groups()
            if chosen & set(g.members)
        ]
        return {
            "models": models,
            "groups": groups,
            "backlog": relay.backlog(using),
            "shards": shards,
        }
