"""The primary/replica router of Django's multi-database documentation."""

from __future__ import annotations

from typing import Any

from django.db import models


class PrimaryReplicaRouter:
    """Reads go to the replica, writes to the primary ("default")."""

    def db_for_read(self, model: type[models.Model], **hints: Any) -> str:
        return "replica"

    def db_for_write(self, model: type[models.Model], **hints: Any) -> str:
        return "default"

    def allow_relation(self, obj1: models.Model, obj2: models.Model, **hints: Any) -> bool | None:
        if {obj1._state.db, obj2._state.db} <= {"default", "replica"}:
            return True
        return None

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool:
        return True
