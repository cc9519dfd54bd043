"""Give a model the managers a project adding django-mirror would give it.

The quickstart asks that a mirrored model's default manager use ``MirroredQuerySet``:
``objects = MirroredManager()``, or a custom queryset that subclasses
``MirroredQuerySet`` instead of ``QuerySet``. This does that edit at class creation,
for every manager of the model, so custom managers and querysets keep their methods
and their overrides still run first.
"""

from __future__ import annotations

import functools

from django.db import models


def mirrored_queryset(queryset_class: type[models.QuerySet]) -> type[models.QuerySet]:
    """``queryset_class`` with ``MirroredQuerySet`` between it and ``QuerySet``."""
    from django_mirror.query import MirroredQuerySet

    if issubclass(queryset_class, MirroredQuerySet):
        return queryset_class
    if queryset_class is models.QuerySet:
        return MirroredQuerySet
    return _derived(queryset_class, MirroredQuerySet)


@functools.cache
def _derived(cls: type, mixin: type) -> type:
    """``class Name(cls, mixin)``, made once, named and placed like ``cls``."""
    return type(
        cls.__name__,
        (cls, mixin),
        {"__module__": cls.__module__, "__qualname__": cls.__qualname__},
    )


@functools.cache
def mirrored_manager_class(manager_class: type[models.Manager]) -> type[models.Manager]:
    """The class of ``manager_class``'s managers once their queryset is mirrored."""
    from django_mirror.query import MirroredManager

    queryset_class = getattr(manager_class, "_queryset_class", models.QuerySet)
    mirrored = mirrored_queryset(queryset_class)
    if mirrored is queryset_class:
        return manager_class
    if manager_class is models.Manager:
        return MirroredManager
    return type(
        manager_class.__name__,
        (manager_class,),
        {
            "_queryset_class": mirrored,
            "__module__": manager_class.__module__,
            "__qualname__": manager_class.__qualname__,
        },
    )


def mirror_managers(model: type[models.Model]) -> None:
    """Switch every manager of ``model`` (its own and the inherited copies) in place."""
    opts = model._meta
    for manager in [*opts.local_managers, *opts.managers]:
        manager.__class__ = mirrored_manager_class(type(manager))
