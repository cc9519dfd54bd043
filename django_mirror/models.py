"""django-mirror's own bookkeeping tables.

``OutboxBatch`` and ``ShardCheckpoint`` live in the source database; ``RowVersion``
lives in every database target (it is what makes replay idempotent and order-free);
``DeadLetter``, ``MismatchRecord`` and ``MirrorState`` are what the admin shows.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.utils import timezone


class OutboxBatch(models.Model):
    """The events of one ORM write statement, written inside the writing transaction.

    The auto-increment id orders batches in commit order for any one row (a second
    writer of a row waits on the first's row lock before it gets an id), which is why
    event versions derive from it.
    """

    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(default=timezone.now)
    model = models.CharField(max_length=200, help_text="Label of the model written.")
    count = models.PositiveIntegerField(help_text="Events in this batch.")
    payload = models.TextField(help_text="JSON: transaction, time, columns and operations.")
    attempts = models.PositiveIntegerField(default=0)
    claimed_until = models.DateTimeField(
        null=True,
        blank=True,
        help_text="A relay is shipping it until then; after, another relay may take it.",
    )

    class Meta:
        verbose_name = "outbox batch"
        verbose_name_plural = "outbox batches"

    def __str__(self) -> str:
        return f"{self.model} ×{self.count} (#{self.pk})"

    def events(self) -> list[dict[str, Any]]:
        """The batch's operations as wire events (see ``docs/events.md``), in order.

        Versions and ids derive from the batch id and position, so shipping a batch
        twice yields the same events twice, which replay recognises.
        """
        from django_mirror.core.events import event_dicts, load_json

        return event_dicts(self.id, self.model, load_json(self.payload)[0])


class RowVersion(models.Model):
    """Last version applied to one target row; ``deleted`` marks a tombstone."""

    model = models.CharField(max_length=200)
    pk_value = models.CharField(max_length=255)
    version = models.BigIntegerField()
    deleted = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["model", "pk_value"], name="mirror_rowversion_key")
        ]

    def __str__(self) -> str:
        return f"{self.model}:{self.pk_value}@{self.version}"


class ShardCheckpoint(models.Model):
    """How far one replay consumer has durably applied one shard, and who holds it."""

    consumer = models.CharField(max_length=200)
    stream = models.CharField(max_length=200)
    shard_id = models.CharField(max_length=200)
    sequence_number = models.CharField(max_length=128, blank=True, default="")
    finished = models.BooleanField(default=False, help_text="Closed shard read to its end.")
    lease_owner = models.CharField(max_length=200, blank=True, default="")
    lease_expires = models.DateTimeField(null=True, blank=True)
    millis_behind = models.BigIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    stream_identity = models.CharField(
        max_length=400,
        blank=True,
        default="",
        help_text="The stream incarnation the sequence number belongs to (ARN and creation "
        "time); replay refuses a stream that is not this one.",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["consumer", "stream", "shard_id"], name="mirror_checkpoint_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.consumer}/{self.shard_id}@{self.sequence_number or 'start'}"


class DeadLetter(models.Model):
    """A record replay could not apply, kept with the reason so nothing is lost."""

    created_at = models.DateTimeField(default=timezone.now)
    stage = models.CharField(max_length=20, default="replay")
    model = models.CharField(max_length=200, blank=True, default="")
    pk_value = models.CharField(max_length=255, blank=True, default="")
    stream = models.CharField(max_length=200, blank=True, default="")
    shard_id = models.CharField(max_length=200, blank=True, default="")
    sequence_number = models.CharField(max_length=128, blank=True, default="")
    reason = models.TextField()
    payload = models.BinaryField()
    attempts = models.PositiveIntegerField(default=1)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.model or '?'}:{self.pk_value or '?'} — {self.reason[:60]}"


class MismatchRecord(models.Model):
    """A difference between source and target, found by shadow reads, writes or verify."""

    class Kind(models.TextChoices):
        READ = "read"
        WRITE = "write"
        VERIFY = "verify"

    class Status(models.TextChoices):
        SUSPECTED = "suspected"
        CONFIRMED = "confirmed"
        RESOLVED = "resolved"

    created_at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.CONFIRMED)
    model = models.CharField(max_length=200)
    pk_value = models.CharField(max_length=255, blank=True, default="")
    request_path = models.CharField(max_length=500, blank=True, default="")
    query = models.TextField(blank=True, default="")
    source_value = models.JSONField(null=True, blank=True)
    target_value = models.JSONField(null=True, blank=True)
    diff = models.JSONField(null=True, blank=True)
    dismissed_at = models.DateTimeField(null=True, blank=True)
    dismissed_by = models.CharField(max_length=150, blank=True, default="")
    dismissed_reason = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.kind} mismatch {self.model}:{self.pk_value}"


class MirrorState(models.Model):
    """A run-time phase override for one model, with who set it and why.

    ``generation`` counts the model's phase changes; it is the high part of every event
    version captured after the change, so a write made after a switch of stores always
    outranks one made before it, whichever store each was made on.
    """

    model = models.CharField(max_length=200, unique=True)
    phase = models.CharField(
        max_length=10,
        choices=[(p, p) for p in ("off", "capture", "mirror", "promoted")],
    )
    generation = models.PositiveIntegerField(default=0)
    changed_at = models.DateTimeField(default=timezone.now)
    changed_by = models.CharField(max_length=150, blank=True, default="")
    reason = models.TextField(blank=True, default="")
    forced = models.BooleanField(
        default=False, help_text="Set despite a failed precondition (the reason says why)."
    )

    def __str__(self) -> str:
        return f"{self.model}: {self.phase}"


class CopyProgress(models.Model):
    """Where ``mirror_copy`` of one model got to, so a killed copy resumes there."""

    model = models.CharField(max_length=200)
    target = models.CharField(max_length=200)
    last_pk = models.CharField(max_length=255, blank=True, default="")
    rows_read = models.BigIntegerField(default=0)
    rows_copied = models.BigIntegerField(default=0)
    started_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "copy progress"
        constraints = [
            models.UniqueConstraint(fields=["model", "target"], name="mirror_copyprogress_key")
        ]

    def __str__(self) -> str:
        state = "done" if self.finished_at else f"at {self.last_pk or 'start'}"
        return f"copy {self.model} -> {self.target}: {self.rows_copied} rows, {state}"


class CaptureProgress(models.Model):
    """How far ``mirror_capture`` has stored a replication slot's log, kept in the
    database it reads: the slot's lag in seconds, which PostgreSQL does not keep."""

    slot = models.CharField(max_length=63, unique=True)
    lsn = models.CharField(max_length=32, help_text="The log position read and stored to.")
    caught_up_to = models.DateTimeField(
        help_text="Every transaction committed before this time is stored (database clock)."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "capture progress"

    def __str__(self) -> str:
        return f"slot {self.slot}: stored to {self.lsn}"


class MetricWindow(models.Model):
    """One process's figures for one model over one minute, for the dashboard.

    statsd is where metrics live; these rows let the admin show the same figures
    without a metrics server. Each process writes only its own rows, so no two
    processes ever contend for one.
    """

    model = models.CharField(max_length=200)
    minute = models.DateTimeField(help_text="Start of the minute (UTC).")
    process = models.CharField(max_length=100)
    counts = models.JSONField(default=dict, help_text="Counter name -> total in the minute.")
    latency = models.JSONField(
        default=dict, help_text="Store ('source'/'target') -> {histogram bucket: reads}."
    )

    class Meta:
        # The admin shows these rows as the migration dashboard.
        verbose_name = "dashboard"
        verbose_name_plural = "dashboard"
        constraints = [
            models.UniqueConstraint(
                fields=["model", "minute", "process"], name="mirror_metricwindow_key"
            )
        ]
        indexes = [models.Index(fields=["minute"], name="mirror_metricwindow_minute")]

    def __str__(self) -> str:
        return f"{self.model} @ {self.minute:%Y-%m-%d %H:%M} ({self.process})"


class VerifyRun(models.Model):
    """One ``mirror_verify`` of one model: the evidence a move to ``mirror`` asks for."""

    model = models.CharField(max_length=200)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    rows = models.BigIntegerField(default=0)
    differences = models.BigIntegerField(default=0)
    repaired = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["model", "finished_at"], name="mirror_verifyrun_model")]

    def __str__(self) -> str:
        return f"verify {self.model}: {self.differences} differences"

    @property
    def clean(self) -> bool:
        return self.finished_at is not None and self.differences == 0
