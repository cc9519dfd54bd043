"""Stores that mirrored rows are replayed into."""

from __future__ import annotations

import functools
import json

from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from django_mirror.config import conf
from django_mirror.targets.base import ApplyResult, Target, latest_per_row
from django_mirror.targets.cache import CacheTarget
from django_mirror.targets.database import DatabaseTarget
from django_mirror.targets.dynamodb import DynamoDBTarget

__all__ = [
    "ApplyResult",
    "CacheTarget",
    "DatabaseTarget",
    "DynamoDBTarget",
    "database_target",
    "Target",
    "get_target",
    "latest_per_row",
    "target_for",
]


@functools.cache
def database_target(alias: str, live: bool = False) -> DatabaseTarget:
    """The one ``DatabaseTarget`` of an alias per process; ``live`` ones, written from the
    application's own connections, keep foreign-key checks on."""
    return DatabaseTarget(alias, relax_foreign_keys=not live)


@functools.cache
def _backend(spec: str) -> Target:
    options = json.loads(spec)
    backend = import_string(options["BACKEND"])
    return backend(**options.get("OPTIONS", {}))


def get_target(config: conf.ModelConfig) -> Target:
    """The target a model's config names: a ``DATABASES`` alias or a backend dict (one
    instance per distinct dict, so its clients and connections are reused)."""
    if isinstance(config.target, str):
        return database_target(config.target)
    return _backend(json.dumps(config.target or {}, sort_keys=True, default=str))


def target_for(config: conf.ModelConfig, origin: str, live: bool = False) -> Target:
    """Where an event written on the alias ``origin`` is mirrored to: the configured
    target, or the source for writes made on a database target (a promoted model's
    writes go back to the old store, so a rollback loses none).

    ``live`` targets are written from the application's own connections, whose
    foreign-key checks must stay on; replay's are its own and relax them.
    """
    if config.target_alias is not None and origin == config.target_alias:
        return database_target(conf.source_alias(), live)
    if live and config.target_alias is not None:
        return database_target(config.target_alias, live)
    return get_target(config)


def clear_cache() -> None:
    """Forget target instances (settings changed: endpoints, aliases, options)."""
    database_target.cache_clear()
    _backend.cache_clear()


def _on_setting_changed(*, setting: str, **kwargs: object) -> None:
    if setting in conf.RECONFIGURING:
        clear_cache()


setting_changed.connect(_on_setting_changed, dispatch_uid="django_mirror.targets")
