"""``MirrorRouter``: reads and writes of a promoted model go to its target alias;
``migrate --database=<target>`` creates only what the target needs there."""

from __future__ import annotations

from typing import Any

from django.db import models

from django_mirror.config import conf

APP_LABEL = "django_mirror"


class MirrorRouter:
    """Routes by each model's current phase (run-time overrides included).

    Before promotion it has no opinion, so the project's other routers and ``default``
    decide as they did; once promoted, the model's reads and writes go to its target.
    """

    def _promoted_alias(self, model: type[models.Model]) -> str | None:
        config = conf.model_config(model)
        if config is not None and config.promoted:
            return config.target_alias
        return None

    def db_for_read(self, model: type[models.Model], **hints: Any) -> str | None:
        return self._promoted_alias(model)

    def db_for_write(self, model: type[models.Model], **hints: Any) -> str | None:
        return self._promoted_alias(model)

    def allow_relation(self, obj1: models.Model, obj2: models.Model, **hints: Any) -> bool | None:
        """Objects of mirrored models may relate across the source and its targets:
        both stores hold the same rows, whichever an instance was loaded from."""
        aliases = conf.database_aliases()
        mirrored = conf.model_config(type(obj1)) or conf.model_config(type(obj2))
        if mirrored is not None and {obj1._state.db, obj2._state.db} <= aliases:
            return True
        return None

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        """On a target alias: the tables of the models mirrored into it (their
        many-to-many tables with them) and django-mirror's own; nothing else."""
        targets = _target_tables()
        if db == conf.source_alias() or db not in targets:
            return None
        if app_label == APP_LABEL:
            return True
        if model_name is None:
            return False  # RunPython/RunSQL of other apps: their data is not here
        return (app_label, model_name) in targets[db]


def _target_tables() -> dict[str, set[tuple[str, str]]]:
    """``{target alias: {(app_label, model_name), ...}}`` of the models mirrored into it."""
    tables: dict[str, set[tuple[str, str]]] = {}
    for model, config in conf.mirrored_models().items():
        if config.target_alias:
            opts = model._meta.concrete_model._meta
            tables.setdefault(config.target_alias, set()).add((opts.app_label, opts.model_name))
    return tables
