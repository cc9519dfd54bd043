"""What tells a model's rows apart besides the primary key: its unique field sets (unique
fields, ``unique_together``, unconditional unique constraints)."""

from __future__ import annotations

from django.db import models


def unique_fields(model: type[models.Model]) -> list[list[models.Field]]:
    """The model's unique field sets, each a list of concrete fields."""
    opts = model._meta
    sets: list[list[models.Field]] = [
        [f] for f in opts.concrete_fields if f.unique and not f.primary_key
    ]
    for together in opts.unique_together:
        sets.append([opts.get_field(name) for name in together])
    for constraint in opts.total_unique_constraints:
        sets.append([opts.get_field(name) for name in constraint.fields])
    return sets


def unique_sets(model: type[models.Model]) -> list[tuple[str, ...]]:
    """Attribute-name tuples that identify a row besides its primary key."""
    return [tuple(f.attname for f in fields) for fields in unique_fields(model)]
