"""Re-checking a read mismatch record (the admin's Re-check action).

A record whose query was kept (``rerun``) runs it again on both stores and is compared
as the shadow read was: as a whole when the data fixes its answer, else on the rows
it was found differing on (the record's ``keys``), read by key. A record without a
kept query (written before django-mirror kept them, or whose query does not pickle)
is compared on the rows it names, by key; one that names no row cannot be re-checked,
only dismissed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import DatabaseError

from django_mirror.config import conf
from django_mirror.shadow import compare, rerun, scope
from django_mirror.shadow.rerun import CannotRerun

__all__ = ["CannotRerun", "Rechecked", "read_record_pks", "recheck_read"]


@dataclass
class Rechecked:
    """A read record compared again: still differing (with what to store) or not."""

    mismatch: compare.Mismatch | None
    #: The record's new ``diff``, ``source_value`` and ``target_value`` when it differs.
    diff: dict[str, Any] | None = None
    source_value: Any = None
    target_value: Any = None


def read_record_pks(record: Any, config: conf.ModelConfig) -> list[Any] | None:
    """The rows a read record names (its differences, else the rows it was compared
    on), as primary key values; None when it names none or one does not convert."""
    diff = record.diff if isinstance(record.diff, dict) else {}
    texts = [
        str(d["pk"])
        for d in diff.get("differences") or []
        if isinstance(d, dict) and d.get("pk") is not None
    ]
    if not texts and isinstance(diff.get("pk"), str | int):
        texts = [str(diff["pk"])]
    if not texts:
        texts = [str(k) for k in diff.get("keys") or []]
    if not texts and record.pk_value:
        texts = record.pk_value.split(",")
    if not texts or config.model is None:
        return None
    field = config.model._meta.pk
    try:
        pks = [field.to_python(text) for text in texts]
    except ValidationError:
        return None
    return pks if all(pk is not None for pk in pks) else None


def recheck_read(record: Any, config: conf.ModelConfig) -> Rechecked:
    """Run a read record's kept query again on both stores and compare the answers as
    the shadow read did; raises ``CannotRerun`` when the record kept no query that can
    run here (the caller then compares the rows it names, by key)."""
    from django_mirror.shadow.reads import ShadowRead

    diff = record.diff if isinstance(record.diff, dict) else {}
    if config.model is None or config.other_alias is None:
        raise CannotRerun("the model's target is not a database")
    queryset, kind, aggregate = rerun.loads(diff.get("rerun"))
    read = ShadowRead(
        config=config,
        kind=kind,
        queryset=queryset,
        primary=config.primary_alias,
        secondary=config.other_alias,
        control=False,
        scope=scope.Scope(0.0, record.request_path),
        aggregate=aggregate,
        limited=False,
    )
    keys = [str(k) for k in diff.get("keys") or []]
    # Not shadowed itself, whatever the admin request's scope drew.
    with scope.suspended():
        try:
            if keys:
                field = queryset.model._meta.pk
                read.keys = {key: field.to_python(key) for key in keys}
                read.reason = str(diff.get("not_determined") or "")
                judged = read.judge_keys(read.keys, read.reason)
            else:
                judged = read.judge(read.run_on(read.primary), read.run_on(read.secondary))
        except DatabaseError:
            raise
        except Exception as exc:  # a field since removed, a key that no longer converts
            raise CannotRerun(f"the kept query fails here ({type(exc).__name__})") from exc
        if judged.mismatch is None:
            return Rechecked(None)
        read.keys = judged.keys if judged.keys is not None else read.keys
        new = read.record_diff(judged.mismatch, judged.source, judged.target)
    source_value, target_value = new.pop("source_value"), new.pop("target_value")
    new["rerun"] = diff["rerun"]
    return Rechecked(judged.mismatch, new, source_value, target_value)
