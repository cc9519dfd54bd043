"""Stores that mirrored rows are replayed into."""

from __future__ import annotations

from functools import cache

from django.utils.module_loading import import_string

from django_mirror import conf
from django_mirror.targets.base import ApplyResult, Target, latest_per_row
from django_mirror.targets.database import DatabaseTarget

__all__ = ["ApplyResult", "DatabaseTarget", "Target", "get_target", "latest_per_row"]


@cache
def _target(spec: str) -> Target:
    return DatabaseTarget(spec)


def get_target(config: conf.ModelConfig) -> Target:
    """The target a model's config names: a ``DATABASES`` alias or a backend dict."""
    if isinstance(config.target, str):
        return _target(config.target)
    spec = dict(config.target or {})
    backend = import_string(spec["BACKEND"])
    return backend(**spec.get("OPTIONS", {}))
