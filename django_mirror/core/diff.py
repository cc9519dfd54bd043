"""Differences between a row on the source and on the target, as verify, shadow reads
and the mismatch records describe them."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django_mirror.core.events import pk_text

#: What stands in for a ``redact_fields`` value anywhere a difference is shown or sent.
REDACTED = "<redacted>"
MISSING, EXTRA, CHANGED = "missing", "extra", "changed"


@dataclass
class Difference:
    model: str
    pk: Any
    kind: str  # missing in target | extra in target | changed
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "pk": pk_text(self.pk),
            "kind": self.kind,
            "fields": {name: list(pair) for name, pair in self.fields.items()},
        }


def compare_rows(
    label: str,
    names: Sequence[str],
    source: Mapping[Any, Sequence[Any]],
    target: Mapping[Any, Sequence[Any]],
    hidden: Collection[str] = (),
    to_pk: Any = None,
) -> list[Difference]:
    """Rows keyed by primary key, values in ``names`` order: what is missing from the
    target, extra in it, or changed, with ``hidden`` fields' values redacted."""
    differences = []
    for key in source.keys() | target.keys():
        pk = to_pk(key) if to_pk is not None else key
        if key not in target:
            differences.append(Difference(label, pk, MISSING))
        elif key not in source:
            differences.append(Difference(label, pk, EXTRA))
        elif source[key] != target[key]:
            changed = {
                name: (REDACTED, REDACTED) if name in hidden else (s, t)
                for name, s, t in zip(names, source[key], target[key], strict=True)
                if s != t
            }
            differences.append(Difference(label, pk, CHANGED, changed))
    return differences


def redacted_row(
    names: Sequence[str], values: Sequence[Any] | None, hidden: Collection[str]
) -> dict[str, Any] | None:
    """A row as ``{name: value}`` for display, ``hidden`` values redacted; None stays None."""
    if values is None:
        return None
    return {n: REDACTED if n in hidden else v for n, v in zip(names, values, strict=True)}
