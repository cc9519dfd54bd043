from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError
from django.db.models import Count, Sum

from django_mirror import conf, relay
from django_mirror.management.commands._base import MirrorCommand
from django_mirror.models import DeadLetter, MismatchRecord, OutboxBatch, ShardCheckpoint


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
        if options["json"]:
            self.emit_json(report)
            return
        self.stdout.write(
            f"{'model':<32} {'phase':<9} {'target':<12} {'backlog':>8} {'dead':>6} {'mismatch':>9}"
        )
        for row in report["models"]:
            self.stdout.write(
                f"{row['model']:<32} {row['phase']:<9} {str(row['target']):<12} "
                f"{row['backlog']:>8} {row['dead_letters']:>6} {row['mismatches']:>9}"
            )
        self.stdout.write(f"relay backlog: {report['backlog']} events")
        for shard in report["shards"]:
            self.stdout.write(
                f"replay {shard['consumer']} {shard['shard_id']}: "
                f"{'done' if shard['finished'] else str(shard['millis_behind']) + ' ms behind'}"
                f" (lease: {shard['lease_owner'] or 'free'})"
            )

    def _report(self, configs: list[conf.ModelConfig], using: str) -> dict[str, Any]:
        def counts(qs: Any) -> dict[str, int]:
            return {
                row["model"].lower(): row["n"] for row in qs.values("model").annotate(n=Count("id"))
            }

        backlog = {
            row["model"].lower(): row["events"]
            for row in OutboxBatch.objects.using(using)
            .values("model")
            .annotate(events=Sum("count"))
        }
        dead = counts(DeadLetter.objects.using(using).filter(resolved_at__isnull=True))
        mismatches = counts(MismatchRecord.objects.using(using).exclude(status="resolved"))
        models = []
        for config in configs:
            key = config.label.lower()
            models.append(
                {
                    "model": config.label,
                    "phase": config.phase,
                    "target": config.target if isinstance(config.target, str) else "custom",
                    "backlog": backlog.get(key, 0),
                    "dead_letters": dead.get(key, 0),
                    "mismatches": mismatches.get(key, 0),
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
                "updated_at",
            )
        )
        return {"models": models, "backlog": relay.backlog(using), "shards": shards}
