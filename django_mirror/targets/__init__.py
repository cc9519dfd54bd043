"""Stores that mirrored rows are replayed into."""

from __future__ import annotations

from functools import cache

from django.utils.module_loading import import_string

from django_mirror import conf
from django_mirror.targets.base import ApplyResult, Target, latest_per_row
from django_mirror.targets.database import DatabaseTarget

__all__ = [
    "ApplyResult",
    "DatabaseTarget",
    "Target",
    "get_target",
    "latest_per_row",
    "target_for",
]


@cache
def _target(spec: str, live: bool = False) -> Target:
    return DatabaseTarget(spec, relax_foreign_keys=not live)


def get_target(config: conf.ModelConfig) -> Target:
    """The target a model's config names: a ``DATABASES`` alias or a backend dict."""
    if isinstance(config.target, str):
        return _target(config.target)
    spec = dict(config.target or {})
    backend = import_string(spec["BACKEND"])
    return backend(**spec.get("OPTIONS", {}))


def target_for(config: conf.ModelConfig, origin: str, live: bool = False) -> Target:
    """Where an event written on the alias ``origin`` is mirrored to: the configured
    target, or the source for writes made on a database target (a promoted model's
    writes go back to the old store, so a rollback loses none).

    ``live`` targets are written from the application's own connections, whose
    foreign-key checks must stay on; replay's are its own and relax them.
    """
    if config.target_alias is not None and origin == config.target_alias:
        return _target(conf.source_alias(), live)
    if live and config.target_alias is not None:
        return _target(config.target_alias, live)
    return get_target(config)
