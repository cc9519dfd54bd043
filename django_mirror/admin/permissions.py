"""Who may see and act on a mismatch record: whoever may view or change the rows of the
mirrored model it describes (an auto-created M2M table's, its owner's)."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.contrib.auth import get_permission_codename
from django.db.models import Model

from django_mirror.config import conf


def _guarding_model(label: str) -> type[Model] | None:
    """The model whose permissions guard a mismatch record's rows (an M2M table's owner)."""
    config = conf.config_for_label(label)
    model = config.model if config is not None else None
    if model is None:
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError):
            return None
    owner = model._meta.auto_created
    return owner if isinstance(owner, type) else model


def may(user: Any, label: str, action: str) -> bool:
    """Whether ``user`` may ``view`` or ``change`` the rows of the mirrored model ``label``."""
    if user.is_active and user.is_superuser:
        return True
    model = _guarding_model(label)
    if model is None:
        return False
    opts = model._meta

    def has(name: str) -> bool:
        return bool(user.has_perm(f"{opts.app_label}.{get_permission_codename(name, opts)}"))

    return has("view") or has("change") if action == "view" else has(action)
