"""One entry of ``DJANGO_MIRROR['MODELS']``: a model that can be mirrored, with known
options (E001, E002, E006, E007, E010-E014, W001)."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.checks import Error, Warning
from django.db import models

from django_mirror.checks.options import importable
from django_mirror.checks.targets import target_errors
from django_mirror.config import conf

SUPPORTED_PK_TYPES = (
    models.AutoField,
    models.BigAutoField,
    models.SmallAutoField,
    models.IntegerField,
    models.CharField,
    models.UUIDField,
)
#: Longest key text the version and dead-letter tables hold (``RowVersion.pk_value``).
MAX_PK_TEXT = 255
#: The options a model entry may have.
MODEL_OPTIONS = set(conf.DEFAULT_MODEL)


def _pk_refusal(model: type[models.Model]) -> str | None:
    """Why the model's primary key cannot key its rows' events and versions, if it
    cannot: every store must find a row by one exact text of its key."""
    pk = model._meta.pk
    if getattr(model._meta, "pk_fields", [pk]) != [pk]:
        return "a composite key has no single text that events and versions are keyed by"
    if pk.remote_field is not None:
        return (
            "a multi-table child's key is its parent's row; its row spans two tables that "
            "are captured apart (mirror the parent: it is captured when a child is saved)"
        )
    if isinstance(pk, (models.DecimalField, models.FloatField)):
        return "one number has several texts (1.0, 1.00) or none exact, so no exact key"
    if not isinstance(pk, SUPPORTED_PK_TYPES):
        return "events key rows by integer, char and UUID values only"
    if isinstance(pk, models.CharField) and not (pk.max_length or 0) <= MAX_PK_TEXT:
        return f"its values may be longer than the {MAX_PK_TEXT} characters a version holds"
    return None


def model_errors(label: str, opts: Any, source: str) -> list[Any]:
    """One model's options as written, and the model itself: every way it cannot be mirrored."""
    if not isinstance(opts, dict):
        return [
            Error(f"DJANGO_MIRROR['MODELS'][{label!r}] must be a dict.", id="django_mirror.E001")
        ]
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError):
        return [
            Error(
                f"DJANGO_MIRROR['MODELS'] names {label!r}, which is not an installed model.",
                hint="Use 'app_label.ModelName'.",
                id="django_mirror.E002",
            )
        ]
    errors: list[Any] = []
    unknown = set(opts) - MODEL_OPTIONS
    if unknown:
        errors.append(
            Error(
                f"{label} has unknown options: {', '.join(sorted(unknown))}.",
                hint=f"Known options: {', '.join(sorted(MODEL_OPTIONS))}.",
                id="django_mirror.E013",
            )
        )
    merged = {**conf.DEFAULT_MODEL, **opts}
    errors += target_errors(label, merged["target"], source)
    if merged["phase"] not in conf.PHASES:
        errors.append(
            Error(
                f"{label} has unknown phase {merged['phase']!r}.",
                hint=f"Use one of {', '.join(conf.PHASES)}.",
                id="django_mirror.E006",
            )
        )
    rate = merged["shadow_read_rate"]
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0.0 <= rate <= 1.0:
        errors.append(
            Error(
                f"{label}: shadow_read_rate {rate!r} is not within 0.0..1.0.",
                id="django_mirror.E007",
            )
        )
    names = {f.name for f in model._meta.concrete_fields} | {
        f.attname for f in model._meta.concrete_fields
    }
    for option in ("exclude_fields", "redact_fields"):
        for name in merged[option] or ():
            if name not in names:
                errors.append(
                    Error(
                        f"{label}: {option} names {name!r}, which is not a field of the model.",
                        id="django_mirror.E010",
                    )
                )
    if model._meta.pk.name in (merged["exclude_fields"] or ()):
        errors.append(
            Error(f"{label}: the primary key cannot be excluded.", id="django_mirror.E010")
        )
    from django_mirror.query import MirroredQuerySet

    if not isinstance(model._default_manager.all(), MirroredQuerySet):
        errors.append(
            Error(
                f"The default manager of {label} does not use django_mirror.MirroredQuerySet, "
                "so its update(), bulk_create() and bulk_update() would not be captured.",
                hint="objects = django_mirror.MirroredManager() (or your manager "
                "built from a MirroredQuerySet subclass).",
                obj=model,
                id="django_mirror.E011",
            )
        )
    refused = _pk_refusal(model)
    if refused:
        errors.append(
            Error(
                f"{label} has a primary key of type {type(model._meta.pk).__name__}, which "
                f"cannot be mirrored: {refused}.",
                hint="Supported: integer, char (up to 255 characters) and UUID primary keys "
                "on a single field; see docs/settings.md, 'Primary keys'.",
                obj=model,
                id="django_mirror.E012",
            )
        )
    if merged["compare"] is not None and not importable(merged["compare"]):
        errors.append(
            Error(
                f"{label}: compare {merged['compare']!r} cannot be imported.",
                id="django_mirror.E014",
            )
        )
    for m2m in model._meta.local_many_to_many:
        through = m2m.remote_field.through
        if not through._meta.auto_created and through not in conf.mirrored_models():
            errors.append(
                Warning(
                    f"{label}.{m2m.name} goes through {through._meta.label}, which is not "
                    "mirrored: changes to that relation will not reach the target.",
                    hint=f"Add {through._meta.label!r} to DJANGO_MIRROR['MODELS'].",
                    id="django_mirror.W001",
                )
            )
    return errors
