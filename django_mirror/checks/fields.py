"""The fields of mirrored models: no database-level ``on_delete`` (E027), and values an
event can carry (E028)."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from django.core.checks import Error, Tags, register
from django.db import connections, models
from django.db.models import deletion

from django_mirror.config import conf
from django_mirror.core.events import encode_column


@register(Tags.models, "django_mirror")
def check_database_on_delete(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """Django 6.1's ``DB_CASCADE``, ``DB_SET_NULL`` and ``DB_SET_DEFAULT`` have the database
    delete or rewrite child rows itself: no collector, no signal, so no event is captured."""
    database_level = getattr(deletion, "DatabaseOnDelete", None)
    if database_level is None:  # Django before 6.1 has none
        return []
    errors = []
    for model in conf.mirrored_models():
        if model._meta.proxy:
            continue
        for field in model._meta.concrete_fields:
            on_delete = getattr(field.remote_field, "on_delete", None)
            if not isinstance(on_delete, database_level):
                continue
            in_python = str(on_delete).removeprefix("DB_")
            errors.append(
                Error(
                    f"{model._meta.label} is mirrored, but {field.name} has "
                    f"on_delete=models.{on_delete}: deleting a "
                    f"{field.related_model._meta.label} makes the database "
                    f"{'delete' if in_python == 'CASCADE' else 'rewrite'} its rows without "
                    "Django, so django-mirror captures no event and the target keeps them "
                    "as they were.",
                    hint=f"Use on_delete=models.{in_python}: Django then does the same, and "
                    "django-mirror captures it.",
                    obj=field,
                    id="django_mirror.E027",
                )
            )
    return errors


#: A value of each column type as a database driver hands it over: passed through a
#: field's ``from_db_value()``, it is what a loaded instance of the model holds.
_DRIVER_SAMPLES: dict[str, Any] = {
    **dict.fromkeys(("CharField", "TextField", "SlugField", "EmailField"), "x"),
    **dict.fromkeys(
        (
            "IntegerField",
            "BigIntegerField",
            "SmallIntegerField",
            "PositiveIntegerField",
            "PositiveBigIntegerField",
            "PositiveSmallIntegerField",
        ),
        1,
    ),
    "FloatField": 1.5,
    "DecimalField": Decimal("1.5"),
    "BooleanField": True,
    "DateField": dt.date(2000, 1, 2),
    "DateTimeField": dt.datetime(2000, 1, 2, 3, 4, 5),
    "TimeField": dt.time(3, 4, 5),
    "DurationField": dt.timedelta(seconds=1),
    "UUIDField": uuid.UUID(int=1),
    "BinaryField": b"x",
}


def _sample_values(field: models.Field) -> list[Any]:
    """Values the field's instances hold: its default (unless a callable makes it), and
    what it makes of a value the driver hands over (its ``from_db_value()``, where it
    has one). A sample the field cannot make is left out: not ours to judge it by."""
    makers = []
    if field.has_default() and not callable(field.default):
        # A callable default is never called here: it may write (get_or_create()).
        makers.append(field.get_default)
    raw = _DRIVER_SAMPLES.get(field.get_internal_type())
    converter = getattr(field, "from_db_value", None)
    if raw is not None and converter is not None:
        connection = connections[conf.source_alias()]
        makers.append(lambda: converter(raw, None, connection))
    values = []
    for make in makers:
        try:
            values.append(make())
        except Exception:
            continue
    return [value for value in values if value is not None]


@register(Tags.models, "django_mirror")
def check_field_values(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """A field whose values capture cannot carry would refuse every write of its model:
    found here, by its default and by what it makes of a value read from the database,
    rather than at the first ``save()``."""
    errors = []
    for model in conf.mirrored_models():
        config = conf.model_config(model)
        excluded = set(config.exclude_fields if config else ())
        for field in model._meta.concrete_fields:
            if {field.name, field.attname} & excluded:
                continue
            try:
                for value in _sample_values(field):
                    encode_column(field, value)
            except Exception as exc:
                if not isinstance(exc, TypeError):  # the field's own failure, not ours
                    continue
                errors.append(
                    Error(
                        f"{model._meta.label}.{field.name} is mirrored, but its values cannot "
                        f"be carried in an event ({exc}): every write of the model would fail.",
                        hint=f"Add {field.name!r} to the model's exclude_fields, or give "
                        f"{type(field).__name__} a value_to_string() that to_python() reads "
                        "back (as Django's serializers need).",
                        obj=field,
                        id="django_mirror.E028",
                    )
                )
    return errors
