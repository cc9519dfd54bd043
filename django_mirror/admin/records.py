"""Admin pages for dead letters, mismatch records and the outbox."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from django import forms
from django.apps import apps
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth import get_permission_codename
from django.core.exceptions import ValidationError
from django.db import DatabaseError
from django.db.models import F, Model, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from django_mirror.config import conf
from django_mirror.core.diff import CHANGED, EXTRA, MISSING, REDACTED, Difference
from django_mirror.core.events import pk_text
from django_mirror.models import DeadLetter, MismatchRecord, OutboxBatch
from django_mirror.pipeline.verify import Verifier
from django_mirror.shadow import records as read_records


def _redacted_payload(payload: bytes) -> str:
    """The dead letter's record for display, with the model's ``redact_fields`` hidden."""
    try:
        data = json.loads(bytes(payload))
    except (ValueError, UnicodeDecodeError):
        return repr(bytes(payload)[:2000])
    if isinstance(data, dict) and isinstance(data.get("row"), dict):
        config = conf.config_for_label(str(data.get("model", "")))
        if config is not None and config.model is not None:
            hidden = {
                f.column
                for f in config.model._meta.concrete_fields
                if f.name in config.redact_fields or f.attname in config.redact_fields
            }
            data["row"] = {k: ("<redacted>" if k in hidden else v) for k, v in data["row"].items()}
    return json.dumps(data, indent=2, ensure_ascii=False)


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "stage",
        "model",
        "pk_value",
        "short_reason",
        "attempts",
        "resolved_at",
    )
    list_filter = ("stage", "model", ("resolved_at", admin.EmptyFieldListFilter))
    search_fields = ("pk_value", "reason")
    readonly_fields = [f.name for f in DeadLetter._meta.fields if f.name != "payload"] + ["record"]
    exclude = ("payload",)
    actions = ["retry"]

    @admin.display(description="reason")
    def short_reason(self, obj: DeadLetter) -> str:
        return obj.reason[:120]

    @admin.display(description="record")
    def record(self, obj: DeadLetter) -> str:
        return format_html("<pre>{}</pre>", _redacted_payload(obj.payload))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Retry the selected records", permissions=["change"])
    def retry(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        from django_mirror.pipeline.replay import retry_dead_letter

        done = failed = 0
        for letter in queryset.filter(resolved_at__isnull=True):
            reason = retry_dead_letter(letter)
            if reason is None:
                letter.resolved_at = timezone.now()
                letter.save(update_fields=["resolved_at"])
                done += 1
            else:
                DeadLetter.objects.filter(pk=letter.pk).update(
                    attempts=F("attempts") + 1, reason=reason
                )
                failed += 1
        if done:
            self.message_user(request, f"{done} record(s) applied.", messages.SUCCESS)
        if failed:
            self.message_user(request, f"{failed} record(s) failed again.", messages.ERROR)


def _guarding_model(label: str) -> type[Model] | None:
    """The model whose permissions guard a mismatch record's rows (an M2M table's owner)."""
    config = conf.config_for_label(label)
    model = config.model if config is not None else None
    if model is None:
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError):
            return None
    owner = model._meta.auto_created
    return owner if isinstance(owner, type) else model


def _may(user: Any, label: str, action: str) -> bool:
    """Whether ``user`` may ``view`` or ``change`` the rows of the mirrored model ``label``."""
    if user.is_active and user.is_superuser:
        return True
    model = _guarding_model(label)
    if model is None:
        return False
    opts = model._meta

    def has(name: str) -> bool:
        return bool(user.has_perm(f"{opts.app_label}.{get_permission_codename(name, opts)}"))

    return has("view") or has("change") if action == "view" else has(action)


def _redact(value: Any, hidden: set[str]) -> Any:
    """``value`` with every key named in ``redact_fields`` hidden, at any depth.

    Verify stores records already redacted; this also covers records written otherwise.
    """
    if isinstance(value, dict):
        return {k: REDACTED if k in hidden else _redact(v, hidden) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, hidden) for v in value]
    return value


def _shown(value: Any) -> str:
    """One value as a table cell: JSON, so NULL, "" and 0 look different."""
    if value == REDACTED:
        return REDACTED
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


class DismissedFilter(admin.SimpleListFilter):
    """Records dismissed by someone (they no longer count against promotion) or not."""

    title = "dismissed"
    parameter_name = "dismissed"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("no", "Not dismissed"), ("yes", "Dismissed")]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[MismatchRecord]
    ) -> QuerySet[MismatchRecord]:
        if self.value() == "yes":
            return queryset.filter(dismissed_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(dismissed_at__isnull=True)
        return queryset


class DismissForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        max_length=2000,
        help_text="Why these differences are not a problem (kept with your name and the time).",
    )

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise ValidationError("Say why.")
        return reason


@admin.register(MismatchRecord)
class MismatchRecordAdmin(admin.ModelAdmin):
    """Mismatch records, seen as side-by-side diffs, re-checked, repaired or dismissed in
    place.

    Staff see only the records of models they may view, and act only on models they
    may change: the records describe those models' rows.
    """

    list_display = ("created_at", "kind", "status", "model", "pk_value", "difference", "dismissed")
    list_filter = ("model", "kind", "status", DismissedFilter)
    search_fields = ("=pk_value",)
    fields = (
        "created_at",
        "kind",
        "status",
        "model",
        "pk_value",
        "request_path",
        "query",
        "dismissed_at",
        "dismissed_by",
        "dismissed_reason",
    )
    readonly_fields = fields
    actions = ["recheck", "repair", "dismiss"]

    # --- access ---------------------------------------------------------------------------

    def get_queryset(self, request: HttpRequest) -> QuerySet[MismatchRecord]:
        queryset = super().get_queryset(request)
        user = request.user
        if user.is_active and user.is_superuser:
            return queryset
        labels = queryset.order_by().values_list("model", flat=True).distinct()
        return queryset.filter(model__in=[label for label in labels if _may(user, label, "view")])

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        allowed = super().has_view_permission(request, obj)
        return allowed and (obj is None or _may(request.user, obj.model, "view"))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # read-only: records change only through the actions

    def has_recheck_permission(self, request: HttpRequest) -> bool:
        """Change permission on mismatch records; each model's rows are checked per record."""
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.{get_permission_codename('change', opts)}")

    has_repair_permission = has_recheck_permission
    has_dismiss_permission = has_recheck_permission

    # --- list and change view -------------------------------------------------------------

    @admin.display(description="difference")
    def difference(self, obj: MismatchRecord) -> str:
        diff = obj.diff if isinstance(obj.diff, dict) else {}
        kind = str(diff.get("kind", ""))
        if kind in (MISSING, EXTRA):
            return f"{kind} in target"
        names = diff.get("fields") if isinstance(diff.get("fields"), dict) else {}
        if names:
            return f"{kind}: {', '.join(names)}"
        rows = diff.get("differences")
        if not kind and isinstance(rows, list) and rows:
            return f"{len(rows)} row(s) differ"
        if not kind and diff.get("summary") is not None:
            return "result differs"
        return kind

    @admin.display(description="dismissed", boolean=True, ordering="dismissed_at")
    def dismissed(self, obj: MismatchRecord) -> bool:
        return obj.dismissed_at is not None

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: MismatchRecord | None = None,
    ) -> HttpResponse:
        if obj is not None:
            context.update(self._diff_context(request, obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _diff_context(self, request: HttpRequest, obj: MismatchRecord) -> dict[str, Any]:
        """The side-by-side table: one row per field, differing ones flagged."""
        config = conf.config_for_label(obj.model)
        hidden = set(config.redact_fields) if config is not None else set()
        source, target = _redact(obj.source_value, hidden), _redact(obj.target_value, hidden)
        diff = _redact(obj.diff, hidden) if isinstance(obj.diff, dict) else {}
        pairs = diff.get("fields") if isinstance(diff.get("fields"), dict) else {}
        rows: list[dict[str, Any]] = []
        if all(isinstance(side, dict | None) for side in (source, target)):
            names = list(source or {})
            names += [n for n in (target or {}) if n not in names]
            names += [n for n in pairs if n not in names]
            for name in names:
                pair = pairs.get(name) if isinstance(pairs.get(name), list) else None
                cells = []
                for side, index in ((source, 0), (target, 1)):
                    if isinstance(side, dict) and name in side:
                        cells.append((True, side[name]))
                    elif side is not None and pair is not None and len(pair) == 2:
                        cells.append((True, pair[index]))
                    else:
                        cells.append((side is not None, None))
                (s_has, s_value), (t_has, t_value) = cells
                rows.append(
                    {
                        "name": name,
                        "source": _shown(s_value) if s_has else None,
                        "target": _shown(t_value) if t_has else None,
                        "differs": name in pairs or s_has != t_has or s_value != t_value,
                    }
                )
        else:  # not one row per side (a shadow read's result set, say): the whole value
            rows.append(
                {
                    "name": "value",
                    "source": _shown(source),
                    "target": _shown(target),
                    "differs": source != target,
                }
            )
        kind = str(diff.get("kind", ""))
        opts = self.opts
        return {
            "mismatch_rows": rows,
            "mismatch_kind": f"{kind} in target" if kind in (MISSING, EXTRA) else kind,
            "mismatch_source_alias": conf.source_alias(),
            "mismatch_target_alias": config.target_alias if config is not None else "",
            "mismatch_can_act": self.has_recheck_permission(request)
            and _may(request.user, obj.model, "change"),
            "mismatch_actions": [("recheck", "Re-check"), ("repair", "Repair")]
            + ([("dismiss", "Dismiss")] if obj.dismissed_at is None else []),
            "mismatch_changelist_url": reverse(
                f"admin:{opts.app_label}_{opts.model_name}_changelist",
                current_app=self.admin_site.name,
            ),
        }

    # --- actions --------------------------------------------------------------------------

    @admin.action(
        description="Re-check the selected records in source and target", permissions=["recheck"]
    )
    def recheck(
        self, request: HttpRequest, queryset: QuerySet[MismatchRecord]
    ) -> HttpResponse | None:
        return self._settle(request, queryset, repair=False)

    @admin.action(
        description="Repair the selected rows in the target from the source", permissions=["repair"]
    )
    def repair(
        self, request: HttpRequest, queryset: QuerySet[MismatchRecord]
    ) -> HttpResponse | None:
        return self._settle(request, queryset, repair=True)

    @admin.action(description="Dismiss the selected records (asks why)", permissions=["dismiss"])
    def dismiss(
        self, request: HttpRequest, queryset: QuerySet[MismatchRecord]
    ) -> HttpResponse | None:
        """Ask why, then mark the records dismissed with who and when: they stay listed,
        and no longer count against promotion."""
        records = list(queryset)
        allowed = [r for r in records if _may(request.user, r.model, "change")]
        for label in sorted({r.model for r in records} - {r.model for r in allowed}):
            self.message_user(
                request, f"Skipped {label}: you may not change its rows.", messages.ERROR
            )
        if not allowed:
            return self._back(request, records)
        form = DismissForm(request.POST if request.POST.get("apply") else None)
        if form.is_valid():
            pending = [r.pk for r in allowed if r.dismissed_at is None]
            done = (
                MismatchRecord.objects.filter(pk__in=pending, dismissed_at__isnull=True).update(
                    dismissed_at=timezone.now(),
                    dismissed_by=request.user.get_username()[:150],
                    dismissed_reason=form.cleaned_data["reason"],
                )
                if pending
                else 0
            )
            self.message_user(request, f"{done} record(s) dismissed.", messages.SUCCESS)
            already = len(allowed) - len(pending)
            if already:
                self.message_user(
                    request,
                    f"{already} record(s) were dismissed already; their reason is kept.",
                    messages.WARNING,
                )
            return self._back(request, records)
        opts = self.opts
        context = {
            **self.admin_site.each_context(request),
            "title": "Why dismiss these mismatch records?",
            "subtitle": None,
            "opts": opts,
            "app_label": opts.app_label,
            "records": allowed,
            "form": form,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "from_change": bool(request.POST.get("_from_change")),
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/django_mirror/mismatchrecord/dismiss.html", context)

    def _back(self, request: HttpRequest, records: list[MismatchRecord]) -> HttpResponse | None:
        """Back to the record's page when the action was started there, else the list."""
        if request.POST.get("_from_change") and len(records) == 1:
            opts = self.opts
            return HttpResponseRedirect(
                reverse(
                    f"admin:{opts.app_label}_{opts.model_name}_change",
                    args=[records[0].pk],
                    current_app=self.admin_site.name,
                )
            )
        return None

    def _settle(
        self, request: HttpRequest, queryset: QuerySet[MismatchRecord], repair: bool
    ) -> HttpResponse | None:
        """Compare the records again (after rewriting their rows, for repair); a record
        whose difference is gone is resolved, the others get what differs now.

        A read record runs its kept query again on both stores (``shadow.records``);
        other records, and read records that kept no query, compare the rows they name
        by key.
        """
        records = list(queryset)
        by_label: dict[str, list[MismatchRecord]] = defaultdict(list)
        for record in records:
            by_label[record.model].append(record)
        skipped: list[str] = []
        counts = {"repaired": 0, "resolved": 0, "remaining": 0}
        for label, group in by_label.items():
            config = conf.config_for_label(label)
            if not _may(request.user, label, "change"):
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
                        self._rerun(record, config, counts)
                        continue
                    except read_records.CannotRerun as exc:
                        why = str(exc)
                    except DatabaseError as exc:
                        skipped.append(f"{label}: record {record.pk}: {exc}")
                        continue
                else:
                    why = ""
                pks = self._record_pks(record, config)
                if not pks:
                    reason = "names no row"
                    if record.kind == MismatchRecord.Kind.READ:
                        reason += (
                            f" and its query cannot run again ({why or 'repair rewrites rows'})"
                        )
                    skipped.append(f"{label}: record {record.pk} {reason}; dismiss it instead")
                    continue
                keyed.append((record, pks))
            if keyed:
                try:
                    self._settle_by_key(config, keyed, repair, counts)
                except DatabaseError as exc:
                    skipped.append(f"{label}: {exc}")
        resolved, remaining = counts["resolved"], counts["remaining"]
        done = resolved + remaining
        if repair and done:
            self.message_user(
                request, f"{counts['repaired']} row(s) rewritten in the target.", messages.SUCCESS
            )
        if done:
            level = messages.SUCCESS if not remaining else messages.WARNING
            self.message_user(
                request,
                f"{done} record(s) re-checked: {resolved} resolved, {remaining} still differ.",
                level,
            )
        for reason in skipped:
            self.message_user(request, f"Skipped {reason}.", messages.ERROR)
        return self._back(request, records)

    @staticmethod
    def _record_pks(record: MismatchRecord, config: conf.ModelConfig) -> list[Any] | None:
        if record.kind == MismatchRecord.Kind.READ:
            return read_records.read_record_pks(record, config)
        assert config.model is not None
        try:
            pk = config.model._meta.pk.to_python(record.pk_value)
        except ValidationError:
            return None
        return None if pk is None or record.pk_value == "" else [pk]

    @staticmethod
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

    @staticmethod
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
                differences.setdefault(
                    pk_text(pk), Difference(config.label, pk, str(kind or CHANGED))
                )
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


@admin.register(OutboxBatch)
class OutboxBatchAdmin(admin.ModelAdmin):
    list_display = ("id", "created_at", "model", "count", "attempts")
    list_filter = ("model",)
    exclude = ("payload",)
    readonly_fields = ("created_at", "model", "count", "attempts")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # deleting a batch would lose its events
