"""``MirroredQuerySet`` and ``MirroredManager``, the public names: the capture half
(``capture.queryset``) and the shadow-read half (``shadow.queryset``) in one queryset.

``update()``, ``bulk_create()`` and ``bulk_update()`` bypass ``post_save``; a mirrored
model's default manager must use this queryset so they are captured too (system check
``django_mirror.E011`` enforces it), and its reads are the ones shadow-read sampling sees.
"""

from __future__ import annotations

from django.db import models

from django_mirror.capture.queryset import CapturingQuerySet
from django_mirror.shadow.queryset import ShadowedQuerySet

__all__ = ["MirroredManager", "MirroredQuerySet"]


class MirroredQuerySet(ShadowedQuerySet, CapturingQuerySet):
    """A ``QuerySet`` whose bulk write methods record operation events and whose reads,
    in a sampled shadow-read scope, also run on the other store.

    The two halves override disjoint methods, so their order changes nothing; this
    class adds none, and is what pickles and what ``E011`` looks for.
    """


class MirroredManager(models.Manager.from_queryset(MirroredQuerySet)):  # type: ignore[misc]
    """The default manager for mirrored models."""
