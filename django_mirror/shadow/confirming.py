"""Confirming a read mismatch: the ``MismatchRecord`` it leaves, which the admin's
Re-check rewrites (``shadow.records``), and its Sentry event, grouped by query shape."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import models

from django_mirror.config import conf
from django_mirror.core.diff import REDACTED
from django_mirror.observability import reporting
from django_mirror.shadow import compare, rerun, scope
from django_mirror.shadow.determinism import AGGREGATE
from django_mirror.shadow.judging import MAX_KEYED


class Confirming:
    """``ShadowRead``'s report of a difference that stayed: record, Sentry, query shape."""

    # The fields of ``ShadowRead`` this half reads.
    config: conf.ModelConfig
    kind: str
    queryset: models.QuerySet
    primary: str
    secondary: str | None
    scope: scope.Scope
    aggregate: tuple[tuple[Any, ...], dict[str, Any]]
    keys: dict[str, Any] | None
    reason: str

    def shape(self) -> str:
        """The query's SQL without parameter values: what groups mismatches in Sentry
        (and never carries a filtered-on value)."""
        try:
            sql, _ = self.queryset.query.get_compiler(using=self.primary).as_sql()
        except EmptyResultSet:
            sql = "<empty result>"
        except Exception:
            sql = f"<{self.queryset.query.__class__.__name__}>"
        return f"{self.kind}: {sql}"

    def confirm(
        self, mismatch: compare.Mismatch, source: compare.Result, target: compare.Result
    ) -> None:
        from django_mirror.models import MismatchRecord

        label = self.config.label
        shape = self.shape()
        pks = mismatch.pks
        diff = self.record_diff(mismatch, source, target)
        source_shown, target_shown = diff.pop("source_value"), diff.pop("target_value")
        kept = rerun.dumps(self.queryset, self.kind, self.aggregate)
        if kept is not None:
            diff["rerun"] = kept
        with reporting.guarded("a read mismatch could not be recorded"):
            MismatchRecord.objects.using(conf.source_alias()).create(
                kind=MismatchRecord.Kind.READ,
                status=MismatchRecord.Status.CONFIRMED,
                model=label,
                pk_value=",".join(pks[:10])[:255],
                request_path=self.scope.path[:500],
                query=shape,
                source_value=source_shown,
                target_value=target_shown,
                diff=diff,
            )
        reporting.sentry_mismatch(
            "read",
            label,
            shape,
            mismatch.fields,
            pks,
            f"django-mirror: read mismatch on {label}",
        )

    def record_diff(
        self, mismatch: compare.Mismatch, source: compare.Result, target: compare.Result
    ) -> dict[str, Any]:
        """A read mismatch record's diff, with its ``source_value`` and ``target_value``
        (redacted), as ``confirm`` writes them and the admin's Re-check rewrites them."""
        pks = mismatch.pks
        diff: dict[str, Any] = {
            "differences": [d.as_dict() for d in mismatch.differences[:100]],
            "summary": mismatch.summary,
            "stores": [self.primary, self.secondary],
        }
        if self.keys is not None:
            # Compared on these rows, read by key: the answer as a whole was the
            # database's choice. Re-check reads them again.
            diff["keys"] = sorted(self.keys)[:MAX_KEYED]
            diff["not_determined"] = self.reason
        if self._names_redacted_field():
            source_shown: Any = REDACTED
            target_shown: Any = REDACTED
            if mismatch.summary is not None:
                diff["summary"] = REDACTED
        elif len(pks) == 1 and mismatch.summary is None:
            # One row: shown like verify's records, field by field, side by side.
            diff.update(mismatch.differences[0].as_dict())
            source_shown = compare.shown_row(self.config, source, pks[0])
            target_shown = compare.shown_row(self.config, target, pks[0])
        else:
            source_shown = compare.shown(self.config, source)
            target_shown = compare.shown(self.config, target)
        diff["source_value"], diff["target_value"] = source_shown, target_shown
        return diff

    def _names_redacted_field(self) -> bool:
        """Results whose values cannot be told apart by field name, on a model with
        ``redact_fields``: aggregates and annotations (an alias need not name the field
        it reads, as in ``values(code=F("isbn"))``), and ``values_list()`` tuples that
        hold a redacted field. They are hidden whole."""
        hidden = set(self.config.redact_fields)
        if not hidden:
            return False
        if self.kind == AGGREGATE or self.queryset.query.annotations:
            return True
        fields = getattr(self.queryset, "_fields", None) or ()
        if not fields and self.queryset._iterable_class not in (
            models.query.ModelIterable,
            models.query.ValuesIterable,
        ):
            return True  # values_list() of every field
        return any(name.split("__")[0] in hidden for name in fields)
