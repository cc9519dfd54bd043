"""Give a model the managers a project adding django-mirror would give it.

The quickstart asks that a mirrored model's default manager use ``MirroredQuerySet``:
``objects = MirroredManager()``, or custom querysets and managers that subclass
``MirroredQuerySet`` / ``MirroredManager`` instead of ``QuerySet`` / ``Manager``. This
makes exactly that edit as each model class is prepared: a class whose base is
``QuerySet`` (or ``Manager``) gets the mirrored one as its base instead, in place, so
it keeps its name, its methods, its overrides (which still run first) and pickles as
before.
"""

from __future__ import annotations

from django.db import models


def _rebase(cls: type, plain: type, mirrored: type) -> None:
    """Wherever ``plain`` is a direct base in ``cls``'s hierarchy, put ``mirrored``; the
    classes ``mirrored`` is made of (``MirroredQuerySet``'s capture and shadow halves
    both derive from ``QuerySet``) are left as they are."""
    for klass in cls.__mro__:
        if klass in mirrored.__mro__ or plain not in klass.__bases__:
            continue
        klass.__bases__ = tuple(mirrored if b is plain else b for b in klass.__bases__)


def mirror_manager(manager: models.Manager) -> None:
    from django_mirror.query import MirroredManager, MirroredQuerySet

    queryset_class = getattr(manager, "_queryset_class", models.QuerySet)
    if queryset_class is not models.QuerySet:
        _rebase(queryset_class, models.QuerySet, MirroredQuerySet)
        return
    if type(manager) is models.Manager:
        manager.__class__ = MirroredManager
    else:
        _rebase(type(manager), models.Manager, MirroredManager)


def mirror_managers(model: type[models.Model]) -> None:
    """Every manager of ``model``, in place: its own, the copies it inherited, and those
    of its abstract bases, from which Django copies them again whenever the model's
    ``_meta`` caches are expired."""
    opts = model._meta
    managers = [*opts.local_managers, *opts.managers]
    for base in model.__mro__[1:]:
        base_opts = getattr(base, "_meta", None)
        if base_opts is not None and base_opts.abstract:
            managers += base_opts.local_managers
    for manager in managers:
        mirror_manager(manager)
