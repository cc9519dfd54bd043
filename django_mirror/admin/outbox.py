"""The outbox's admin: batches waiting for the relay, listed read-only (deleting one
would lose its events)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from django_mirror.models import OutboxBatch


@admin.register(OutboxBatch)
class OutboxBatchAdmin(admin.ModelAdmin):
    list_display = ("id", "created_at", "model", "count", "attempts")
    list_filter = ("model",)
    exclude = ("payload",)
    readonly_fields = ("created_at", "model", "count", "attempts")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # deleting a batch would lose its events
