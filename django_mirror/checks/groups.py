"""Groups of models tied by foreign keys start in one phase (W008)."""

from __future__ import annotations

from typing import Any

from django.core.checks import Tags, Warning, register

from django_mirror.config import conf


@register(Tags.models, "django_mirror")
def check_group_phases(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """Settings that start a group's models in different phases split it from the first
    write: a cascade would run on one primary and miss rows on the other."""
    from django_mirror.config import graph

    configs = {c.label.lower(): c for c in conf.mirrored_models().values()}  # as set
    messages = []
    for group in graph.groups():
        configured = {
            label: config.phase
            for label in group.members
            if (config := configs.get(label.lower())) is not None
        }
        if len(set(configured.values())) > 1:
            phases = ", ".join(f"{label}: {phase}" for label, phase in configured.items())
            messages.append(
                Warning(
                    f"DJANGO_MIRROR['MODELS'] starts one group in different phases ({phases}).",
                    hint="Models tied by foreign keys whose on_delete writes the other "
                    "table move together: give them one phase (see docs/runbook.md, Groups).",
                    id="django_mirror.W008",
                )
            )
    return messages
