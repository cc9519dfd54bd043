"""The admin's phase controls: every mirrored model with its phase and group, and a move
to another phase (of one model or its whole group) through a confirmation page that shows
the preconditions (who, when, why kept)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from django_mirror.config import conf, graph
from django_mirror.models import MirrorState
from django_mirror.phases import transitions


class MoveForm(forms.Form):
    model = forms.ChoiceField()
    phase = forms.ChoiceField(choices=[(p, p) for p in conf.PHASES])
    group = forms.BooleanField(
        required=False,
        initial=True,
        label="Whole group",
        help_text="Move every model tied to this one by a foreign key whose on_delete "
        "writes the other table; a move that splits a group is refused unless forced.",
    )
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        required=False,
        help_text="Kept with the change; required to force past a failed precondition.",
    )
    force = forms.BooleanField(required=False, help_text="Move despite failed preconditions.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        labels = sorted(c.label for c in conf.configs() if c.owner is None)
        self.fields["model"].choices = [(label, label) for label in labels]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("force") and not (data.get("reason") or "").strip():
            self.add_error("reason", "Say why the preconditions may be overridden.")
        return data


@admin.register(MirrorState)
class MirrorStateAdmin(admin.ModelAdmin):
    """Run-time phases. Rows are never edited or deleted directly: a move goes through
    the confirmation page, and a row's generation must outlive it (event versions
    build on it)."""

    list_display = ("model", "phase", "generation", "changed_at", "changed_by", "forced")
    readonly_fields = (
        "model",
        "phase",
        "generation",
        "changed_at",
        "changed_by",
        "reason",
        "forced",
    )
    change_list_template = "admin/django_mirror/mirrorstate/change_list.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def may_move(self, request: HttpRequest) -> bool:
        return super().has_change_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # moves go through move_view

    def get_urls(self) -> list[Any]:
        opts = self.opts
        move = path(
            "move/",
            self.admin_site.admin_view(self.move_view),
            name=f"{opts.app_label}_{opts.model_name}_move",
        )
        return [move, *super().get_urls()]

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        states = {s.model.lower(): s for s in MirrorState.objects.using(conf.source_alias())}
        rows = [
            {
                "label": c.label,
                "phase": c.phase,
                "source": "run time" if c.label.lower() in states else "settings",
                "target": c.target_alias or "custom",
                "group": ", ".join(m for m in graph.group_of(c.label).members if m != c.label),
            }
            for c in sorted(conf.configs(), key=lambda c: c.label)
            if c.owner is None
        ]
        context = {"mirror_models": rows, "mirror_may_move": self.may_move(request)}
        return super().changelist_view(request, {**context, **(extra_context or {})})

    def move_view(self, request: HttpRequest) -> HttpResponse:
        if not self.may_move(request):
            raise PermissionDenied
        data = request.POST if request.method == "POST" else None
        form = MoveForm(data, initial=request.GET.dict())
        context: dict[str, Any] = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Move a model to another phase",
            "form": form,
        }
        if data is not None and form.is_valid():
            config = conf.config_for_label(form.cleaned_data["model"])
            phase = form.cleaned_data["phase"]
            assert config is not None  # the form offers mirrored models only
            moving = [config.label]
            if form.cleaned_data["group"]:
                moving += [
                    label
                    for label, current in graph.group_of(config.label).phases().items()
                    if label != config.label and current != phase
                ]
            try:
                checks = {
                    label: transitions.preconditions(conf.config_for_label(label), phase, moving)  # type: ignore[arg-type]
                    for label in moving
                }
            except DatabaseError as exc:
                messages.error(request, f"Cannot read django-mirror's tables: {exc}")
                return TemplateResponse(
                    request, "admin/django_mirror/mirrorstate/move.html", context
                )
            context.update(
                config=config,
                phase=phase,
                moving=moving,
                checks=[
                    replace(p, name=f"{label}: {p.name}") if len(moving) > 1 else p
                    for label, found in checks.items()
                    for p in found
                ],
                ready=all(p.ok for found in checks.values() for p in found),
            )
            if "confirm" in request.POST:
                try:
                    transitions.change_phases(
                        moving,
                        phase,
                        by=request.user.get_username(),
                        reason=form.cleaned_data["reason"],
                        force=form.cleaned_data["force"],
                    )
                except (transitions.PhaseRefused, ValueError) as exc:
                    messages.error(request, str(exc))
                else:
                    messages.success(
                        request,
                        f"{', '.join(moving)} moved from {config.phase} to {phase}; every "
                        f"process follows within "
                        f"{conf.get_settings().phases.refresh:.0f} s.",
                    )
                    return HttpResponseRedirect(
                        reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist")
                    )
        return TemplateResponse(request, "admin/django_mirror/mirrorstate/move.html", context)
