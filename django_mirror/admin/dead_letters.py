"""The dead letters' admin: records replay or the relay could not apply, shown with
their redacted payload and retried from the list."""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.db.models import F, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html

from django_mirror.config import conf
from django_mirror.models import DeadLetter


def _redacted_payload(payload: bytes) -> str:
    """The dead letter's record for display, with the model's ``redact_fields`` hidden."""
    try:
        data = json.loads(bytes(payload))
    except (ValueError, UnicodeDecodeError):
        return repr(bytes(payload)[:2000])
    if isinstance(data, dict) and isinstance(data.get("row"), dict):
        config = conf.config_for_label(str(data.get("model", "")))
        if config is not None and config.model is not None:
            hidden = {
                f.column
                for f in config.model._meta.concrete_fields
                if f.name in config.redact_fields or f.attname in config.redact_fields
            }
            data["row"] = {k: ("<redacted>" if k in hidden else v) for k, v in data["row"].items()}
    return json.dumps(data, indent=2, ensure_ascii=False)


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "stage",
        "model",
        "pk_value",
        "short_reason",
        "attempts",
        "resolved_at",
    )
    list_filter = ("stage", "model", ("resolved_at", admin.EmptyFieldListFilter))
    search_fields = ("pk_value", "reason")
    readonly_fields = [f.name for f in DeadLetter._meta.fields if f.name != "payload"] + ["record"]
    exclude = ("payload",)
    actions = ["retry"]

    @admin.display(description="reason")
    def short_reason(self, obj: DeadLetter) -> str:
        return obj.reason[:120]

    @admin.display(description="record")
    def record(self, obj: DeadLetter) -> str:
        return format_html("<pre>{}</pre>", _redacted_payload(obj.payload))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Retry the selected records", permissions=["change"])
    def retry(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        from django_mirror.pipeline.dead_letters import retry_dead_letter

        done = failed = 0
        for letter in queryset.filter(resolved_at__isnull=True):
            reason = retry_dead_letter(letter)
            if reason is None:
                letter.resolved_at = timezone.now()
                letter.save(update_fields=["resolved_at"])
                done += 1
            else:
                DeadLetter.objects.filter(pk=letter.pk).update(
                    attempts=F("attempts") + 1, reason=reason
                )
                failed += 1
        if done:
            self.message_user(request, f"{done} record(s) applied.", messages.SUCCESS)
        if failed:
            self.message_user(request, f"{failed} record(s) failed again.", messages.ERROR)
