"""The harness that runs Django's own suite mirrored (django_suite/) makes the edit the
quickstart asks of a project; it runs only in `make test-django`, so its edit is
checked here too, against the package's own classes as they are now."""

from __future__ import annotations

from django.db import models

from django_mirror.query import MirroredManager, MirroredQuerySet
from django_suite.managers import mirror_manager


def test_a_custom_queryset_is_rebased_onto_the_mirrored_one() -> None:
    class ShopQuerySet(models.QuerySet):
        def cheap(self) -> models.QuerySet:
            return self.filter(price__lt=10)

    manager = models.Manager.from_queryset(ShopQuerySet)()
    mirror_manager(manager)
    assert issubclass(ShopQuerySet, MirroredQuerySet)
    assert ShopQuerySet.__mro__.index(ShopQuerySet) < ShopQuerySet.__mro__.index(
        MirroredQuerySet
    )  # the project's overrides still run first


def test_the_mirrored_classes_and_their_halves_are_left_alone() -> None:
    bases = {klass: klass.__bases__ for klass in MirroredQuerySet.__mro__}
    mirror_manager(MirroredManager())
    mirror_manager(models.Manager.from_queryset(MirroredQuerySet)())
    assert {klass: klass.__bases__ for klass in MirroredQuerySet.__mro__} == bases


def test_a_plain_manager_becomes_the_mirrored_one() -> None:
    manager = models.Manager()
    mirror_manager(manager)
    assert type(manager) is MirroredManager
