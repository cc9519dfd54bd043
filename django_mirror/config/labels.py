"""The tables ``mirror_copy`` and ``mirror_verify`` work on, from the labels given.

A mirrored model's label brings the many-to-many tables Django created for it, and such
a table can also be named alone by its own label (``shop.Order_tags``), as events,
reports and mismatch records spell it.
"""

from __future__ import annotations

from collections.abc import Sequence

from django_mirror.config import conf


class UnknownLabels(ValueError):
    """Labels that name no mirrored model or many-to-many table."""

    def __init__(self, unknown: Sequence[str], mirrored: Sequence[str]) -> None:
        super().__init__(
            f"not mirrored: {', '.join(unknown)} (mirrored: {', '.join(mirrored) or 'none'})"
        )


def tables(labels: Sequence[str] | None) -> list[conf.ModelConfig]:
    """Configs for ``app_label.Model`` labels (case-insensitive; none given: every
    mirrored model), followed by the auto-created many-to-many tables of the models
    among them; each table once."""
    mirrored = {c.label.lower(): c for c in conf.configs()}  # phases as they are now
    unknown = [label for label in labels or () if label.lower() not in mirrored]
    if unknown:
        raise UnknownLabels(unknown, sorted(mirrored))
    if labels:
        chosen = [mirrored[label.lower()] for label in labels]
    else:
        chosen = [c for c in mirrored.values() if c.owner is None]
    owners = {c.label.lower() for c in chosen if c.owner is None}
    chosen += [c for c in mirrored.values() if c.owner and c.owner.lower() in owners]
    return list({c.label: c for c in chosen}.values())
