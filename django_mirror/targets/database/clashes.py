"""Unique-value clashes: a target row holding, under another key, a value an upsert sets.

Shards interleave, so the event that moved a unique value away from a row can arrive
after the event that gave it to another; the target must then tell a stale holder
(evicted) from a newer one (the upsert is superseded).
"""

from __future__ import annotations

from typing import Any

from django.db import models

from django_mirror.core.events import UPSERT, Event, decode_row, pk_text
from django_mirror.core.keys import unique_sets
from django_mirror.targets.database import versions
from django_mirror.targets.database.rows import mirrored_model
from django_mirror.targets.database.statements import delete_rows


def evict_unique_clashes(alias: str, event: Event) -> bool:
    """Delete target rows that hold this upsert's unique values under another key;
    True, deleting nothing, when one of them is newer than the event.

    The source's own unique constraint means that of two rows holding one value, the
    older one changed or went before the newer one took it; that change's event is
    still on its way (it keeps its version, so it lands). So an older row is evicted,
    and against a newer one this event is already superseded (shards interleave).
    """
    if event.op != UPSERT:
        return False
    model = mirrored_model(event.model)
    values = decode_row(model, event.row or {})
    qs = models.QuerySet(model=model, using=alias)
    pks: list[Any] = []
    for names in unique_sets(model):
        lookup = {name: values.get(name) for name in names}
        if None in lookup.values():
            continue
        clashing = qs.filter(**lookup).exclude(pk=model._meta.pk.to_python(event.pk))
        pks.extend(clashing.values_list("pk", flat=True))
    if not pks:
        return False
    held = versions.read(alias, model._meta.label_lower, [pk_text(pk) for pk in pks], lock=True)
    if any(version > event.version for version, _ in held.values()):
        return True
    delete_rows(alias, model, pks)
    return False
