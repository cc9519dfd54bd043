"""A model's ``target``: a ``DATABASES`` alias other than the source, or a ``Target``
backend that can be made from its options (E004, E005, E008, E019)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error
from django.utils.module_loading import import_string

from django_mirror.checks.options import importable


def target_errors(label: str, target: Any, source: str) -> list[Any]:
    """A model's ``target``: an alias that is not the source, or a usable backend."""
    if target is None:
        return [
            Error(
                f"DJANGO_MIRROR['MODELS'][{label!r}] has no 'target'.",
                hint="Name a DATABASES alias or give {'BACKEND': ..., 'OPTIONS': {...}}.",
                id="django_mirror.E004",
            )
        ]
    if isinstance(target, str):
        if target not in settings.DATABASES:
            return [
                Error(
                    f"Target {target!r} of {label} is not a DATABASES alias.",
                    id="django_mirror.E004",
                )
            ]
        if target == source:
            return [
                Error(
                    f"Target of {label} is the source alias {source!r}.",
                    hint="Mirror into a different DATABASES alias.",
                    id="django_mirror.E005",
                )
            ]
        return []
    if not isinstance(target, dict) or not importable(target.get("BACKEND")):
        return [
            Error(
                f"Target backend of {label} cannot be imported: {target!r}.",
                id="django_mirror.E008",
            )
        ]
    return _check_backend(label, target)


def _check_backend(label: str, target: dict[str, Any]) -> list[Any]:
    """The backend is a ``Target`` that accepts its OPTIONS (and, for DynamoDB, makes a
    valid table name for the model): made once here, as replay will make it."""
    from django_mirror.targets import DynamoDBTarget, Target

    backend = import_string(target["BACKEND"])
    problem = None
    if not (isinstance(backend, type) and issubclass(backend, Target)):
        problem = f"{target['BACKEND']} is not a django_mirror.targets.Target"
    else:
        try:
            instance = backend(**(target.get("OPTIONS") or {}))
            if isinstance(instance, DynamoDBTarget):
                instance.table(label)
        except (TypeError, ValueError, LookupError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
    if problem is None:
        return []
    return [
        Error(
            f"Target of {label} cannot be used: {problem}.",
            hint="See docs/targets.md for each backend's OPTIONS.",
            id="django_mirror.E019",
        )
    ]
