"""Settling mismatch records again, the admin's Re-check and Repair actions: a record
whose difference is gone is resolved, the others get what differs now.

A read record runs its kept query again on both stores (``shadow.records``); other
records, and read records that kept no query, compare the rows they name by key.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.core.exceptions import ValidationError
from django.db import DatabaseError

from django_mirror.admin.permissions import may
from django_mirror.config import conf
from django_mirror.core.diff import CHANGED, Difference
from django_mirror.core.events import pk_text
from django_mirror.models import MismatchRecord
from django_mirror.pipeline.verify import Verifier
from django_mirror.shadow import records as read_records


def settle(
    user: Any, records: list[MismatchRecord], repair: bool
) -> tuple[dict[str, int], list[str]]:
    """Compare ``records`` again (after rewriting their rows, for repair), as far as
    ``user`` may change the rows they describe: the counts of rows ``repaired`` and of
    records ``resolved`` and ``remaining``, and why the others were skipped."""
    by_label: dict[str, list[MismatchRecord]] = defaultdict(list)
    for record in records:
        by_label[record.model].append(record)
    skipped: list[str] = []
    counts = {"repaired": 0, "resolved": 0, "remaining": 0}
    for label, group in by_label.items():
        config = conf.config_for_label(label)
        if not may(user, label, "change"):
            skipped.append(f"{label}: you may not change its rows")
            continue
        if config is None or config.model is None:
            skipped.append(f"{label}: not a mirrored model")
            continue
        if repair and config.target_alias is None:
            skipped.append(f"{label}: not mirrored to a database target")
            continue
        keyed: list[tuple[MismatchRecord, list[Any]]] = []
        for record in group:
            if not repair and record.kind == MismatchRecord.Kind.READ:
                try:
                    _rerun(record, config, counts)
                    continue
                except read_records.CannotRerun as exc:
                    why = str(exc)
                except DatabaseError as exc:
                    skipped.append(f"{label}: record {record.pk}: {exc}")
                    continue
            else:
                why = ""
            pks = _record_pks(record, config)
            if not pks:
                reason = "names no row"
                if record.kind == MismatchRecord.Kind.READ:
                    reason += f" and its query cannot run again ({why or 'repair rewrites rows'})"
                skipped.append(f"{label}: record {record.pk} {reason}; dismiss it instead")
                continue
            keyed.append((record, pks))
        if keyed:
            try:
                _settle_by_key(config, keyed, repair, counts)
            except DatabaseError as exc:
                skipped.append(f"{label}: {exc}")
    return counts, skipped


def _record_pks(record: MismatchRecord, config: conf.ModelConfig) -> list[Any] | None:
    """The keys of the rows ``record`` names; None when it names none that converts."""
    if record.kind == MismatchRecord.Kind.READ:
        return read_records.read_record_pks(record, config)
    assert config.model is not None
    try:
        pk = config.model._meta.pk.to_python(record.pk_value)
    except ValidationError:
        return None
    return None if pk is None or record.pk_value == "" else [pk]


def _rerun(record: MismatchRecord, config: conf.ModelConfig, counts: dict[str, int]) -> None:
    """A read record whose query was kept: run it again and compare."""
    found = read_records.recheck_read(record, config)
    if found.mismatch is None:
        record.status = MismatchRecord.Status.RESOLVED
        record.save(update_fields=["status"])
        counts["resolved"] += 1
        return
    record.status = MismatchRecord.Status.CONFIRMED
    record.diff = found.diff
    record.source_value, record.target_value = found.source_value, found.target_value
    record.pk_value = ",".join(found.mismatch.pks[:10])[:255] or record.pk_value
    record.save(update_fields=["status", "diff", "source_value", "target_value", "pk_value"])
    counts["remaining"] += 1


def _settle_by_key(
    config: conf.ModelConfig,
    keyed: list[tuple[MismatchRecord, list[Any]]],
    repair: bool,
    counts: dict[str, int],
) -> None:
    """Compare the rows the records name by key (rewrite them first, for repair)."""
    differences: dict[str, Difference] = {}
    for record, pks in keyed:
        single = isinstance(record.diff, dict) and len(pks) == 1
        kind = record.diff.get("kind") if single else None
        for pk in pks:
            differences.setdefault(pk_text(pk), Difference(config.label, pk, str(kind or CHANGED)))
    verifier = Verifier(config, recheck_delay=0)
    left = verifier.recheck(list(differences.values()))
    if repair and left:
        verifier.stats.differences = left
        counts["repaired"] += verifier.repair()
        left = verifier.stats.differences
    now = {pk_text(d.pk): d for d in left}
    values = verifier.current_values([d.pk for d in left])
    for record, pks in keyed:
        still = [now[pk_text(pk)] for pk in pks if pk_text(pk) in now]
        if not still:
            record.status = MismatchRecord.Status.RESOLVED
            record.save(update_fields=["status"])
            counts["resolved"] += 1
            continue
        record.status = MismatchRecord.Status.CONFIRMED
        if len(pks) == 1:
            key = pk_text(still[0].pk)
            diff = still[0].as_dict()
            record.source_value, record.target_value = values[key]
        else:
            diff = {"differences": [d.as_dict() for d in still[:100]], "summary": None}
            record.source_value = {pk_text(d.pk): values[pk_text(d.pk)][0] for d in still}
            record.target_value = {pk_text(d.pk): values[pk_text(d.pk)][1] for d in still}
        if isinstance(record.diff, dict):
            # What a read record keeps to be re-checked again stays.
            for name in ("rerun", "keys", "not_determined", "stores"):
                if name in record.diff:
                    diff[name] = record.diff[name]
        record.diff = diff
        record.save(update_fields=["status", "diff", "source_value", "target_value"])
        counts["remaining"] += 1
