"""The mirrored models' foreign-key graph: which models must change phase together, and
the order in which one transaction's rows can be written to a store that checks keys.

Django runs ``on_delete`` in the database of the deleted row. Were a customer promoted
and its orders not, deleting the customer on the new primary would cascade there and
leave the orders on the old store pointing at nothing. So models tied by a foreign key
whose ``on_delete`` writes the other table (CASCADE, SET_NULL, SET_DEFAULT, SET(), and
the many-to-many tables between them) form a *group*, and a group moves as one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

from django.core.signals import setting_changed
from django.db import models

from django_mirror.config import conf

#: ``on_delete`` handlers that never write the referring table.
_LEAVES_CHILD = (models.PROTECT, models.RESTRICT, models.DO_NOTHING)


@dataclass(frozen=True)
class Tie:
    """``child.field`` refers to ``parent`` and deleting a parent writes the child."""

    child: str
    field: str
    parent: str
    on_delete: str

    def __str__(self) -> str:
        return f"{self.child}.{self.field} -> {self.parent} ({self.on_delete})"


@dataclass(frozen=True)
class Group:
    """Models that move between phases together; a model tied to none is a group of one."""

    members: tuple[str, ...]
    ties: tuple[Tie, ...]

    def phases(self) -> dict[str, str]:
        """Each member's current phase."""
        return {
            label: config.phase
            for label in self.members
            if (config := conf.config_for_label(label)) is not None
        }

    @property
    def split(self) -> bool:
        """True while the members are not all in one phase."""
        return len(set(self.phases().values())) > 1


def _handler_name(on_delete: object) -> str:
    name = getattr(on_delete, "__name__", repr(on_delete))
    return "SET()" if name == "set_on_delete" else name


def _top_label(model: type[models.Model]) -> str | None:
    """The label a model moves under: its own, or its owner's for an auto M2M table."""
    config = conf.model_config(model)
    if config is None:
        return None
    return config.owner or config.label


def _edges() -> Iterable[tuple[type[models.Model], models.Field, type[models.Model]]]:
    """(model, foreign key, referred model) for every key between two mirrored tables."""
    for model in conf.mirrored_models():
        if model._meta.proxy:
            continue
        for field in model._meta.local_fields:
            remote = field.remote_field
            if remote is None or not isinstance(field, models.ForeignKey):
                continue
            parent = remote.model._meta.concrete_model
            if conf.model_config(parent) is not None:
                yield model, field, parent


@cache
def _ties() -> tuple[Tie, ...]:
    ties = []
    for model, field, parent in _edges():
        child_label, parent_label = _top_label(model), _top_label(parent)
        if child_label is None or parent_label is None or child_label == parent_label:
            continue
        on_delete = field.remote_field.on_delete
        if on_delete in _LEAVES_CHILD:
            continue
        name = field.name
        if model._meta.auto_created:  # an M2M row: name it after the M2M field
            name = f"{model._meta.db_table} ({field.name})"
        ties.append(Tie(child_label, name, parent_label, _handler_name(on_delete)))
    return tuple(ties)


@cache
def _groups() -> dict[str, Group]:
    """Each top-level mirrored label -> its group (union-find over the ties)."""
    labels = sorted({c.label for c in conf.mirrored_models().values() if c.owner is None})
    root = {label: label for label in labels}

    def find(label: str) -> str:
        while root[label] != label:
            root[label] = root[root[label]]
            label = root[label]
        return label

    ties = _ties()
    for tie in ties:
        root[find(tie.child)] = find(tie.parent)
    members: dict[str, list[str]] = {}
    for label in labels:
        members.setdefault(find(label), []).append(label)
    result: dict[str, Group] = {}
    for group_members in members.values():
        inside = set(group_members)
        group = Group(tuple(group_members), tuple(t for t in ties if t.child in inside))
        for label in group_members:
            result[label.lower()] = group
    return result


def groups() -> list[Group]:
    """Every group of two or more models, in label order."""
    seen = {id(g): g for g in _groups().values() if len(g.members) > 1}
    return sorted(seen.values(), key=lambda g: g.members)


def group_of(label: str) -> Group:
    """The group of the mirrored model ``label`` (``LookupError`` if not mirrored)."""
    config = conf.config_for_label(label)
    if config is None:
        raise LookupError(f"{label} is not a mirrored model")
    return _groups()[(config.owner or config.label).lower()]


def left_behind(moving: Iterable[str], phase: str) -> list[str]:
    """Members of the moving models' groups that would stay in another phase than
    ``phase``: a move that leaves any is a split."""
    moving_set = {label.lower() for label in moving}
    behind: list[str] = []
    for label in sorted(moving_set):
        for member, current in group_of(label).phases().items():
            if member.lower() not in moving_set and current != phase and member not in behind:
                behind.append(member)
    return behind


@cache
def parents_first(models_: tuple[type[models.Model], ...]) -> tuple[type[models.Model], ...]:
    """``models_`` ordered so that every model comes after the models it refers to (the
    order inserts can be made in where keys are checked; deletes go the other way).
    Cycles keep their given order; a store checking keys row by row needs its own."""
    inside = set(models_)
    refers: dict[type[models.Model], set[type[models.Model]]] = {m: set() for m in models_}
    for model in models_:
        for field in model._meta.concrete_fields:
            if isinstance(field, models.ForeignKey) and field.db_constraint:
                parent = field.remote_field.model._meta.concrete_model
                if parent in inside and parent is not model:
                    refers[model].add(parent)
    ordered: list[type[models.Model]] = []
    placed: set[type[models.Model]] = set()
    visiting: set[type[models.Model]] = set()

    def place(model: type[models.Model]) -> None:
        if model in placed or model in visiting:
            return
        visiting.add(model)
        for parent in sorted(refers[model], key=lambda m: models_.index(m)):
            place(parent)
        visiting.discard(model)
        placed.add(model)
        ordered.append(model)

    for model in models_:
        place(model)
    return tuple(ordered)


def referrers(
    models_: Sequence[type[models.Model]],
) -> dict[type[models.Model], set[type[models.Model]]]:
    """For each of ``models_``, the others among them that hold a foreign key to it."""
    return {
        parent: {
            child
            for child in models_
            if child is not parent and _refers_to(child, parent)  # type: ignore[arg-type]  # mypy#20409: type[Any] is hashable
        }
        for parent in models_
    }


@cache
def _refers_to(child: type[models.Model], parent: type[models.Model]) -> bool:
    return any(
        isinstance(f, models.ForeignKey)
        and f.db_constraint
        and f.remote_field.model._meta.concrete_model is parent
        for f in child._meta.concrete_fields
    )


def _on_setting_changed(*, setting: str, **kwargs: object) -> None:
    if setting in conf.RECONFIGURING:
        _ties.cache_clear()
        _groups.cache_clear()


setting_changed.connect(_on_setting_changed, dispatch_uid="django_mirror.graph")
