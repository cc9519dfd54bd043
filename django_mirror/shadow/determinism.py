"""Whether the data alone fixes what a query returns, or the database also chooses.

Two stores holding the very same rows can still answer some queries differently: a
slice (or ``first()``, ``latest()``, ``[n]``) of a query without a total ordering keeps
whichever rows each database meets first, ``order_by("?")`` picks at random, and
PostgreSQL's ``distinct(*fields)`` keeps any row of each group unless the ordering
says which. Comparing such answers as a whole reports the databases' choices as
mismatches, so shadow reads ask this module first.

A total ordering is one that no two rows of the result can tie on: it reaches the
primary key, or every field of a unique set that cannot be NULL (``unique=True``,
``unique_together``, a ``UniqueConstraint`` without condition), before any
``"?"``. Only columns of the queried model's own row count (``"author"`` sorts by the
author's own ``Meta.ordering`` when it has one; ``"author_id"`` is the column), and
only while each row appears once in the result: a join to a many-valued relation
repeats a row per related row, and its ``values()`` rows then tie on the key.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.db import models
from django.db.models.expressions import Col, Exists, OrderBy, Subquery
from django.db.models.functions import Random
from django.db.models.sql import Query
from django.db.models.sql.where import WhereNode

from django_mirror.core.keys import unique_fields

ROWS, COUNT, EXISTS, AGGREGATE = "rows", "count", "exists", "aggregate"


@dataclass(frozen=True)
class Determinism:
    #: The data fixes which rows (or values) the answer holds ...
    rows: bool
    #: ... and their order.
    order: bool
    #: Why not, for the logs ("" when determined).
    reason: str = ""


def of(queryset: models.QuerySet, kind: str, returned: int | None = None) -> Determinism:
    """What the data fixes of ``queryset``'s answer as a read of ``kind`` (``rows``,
    ``count``, ``exists``, ``aggregate``); ``returned`` is how many rows the primary
    store's answer held (a slice that was not filled returned every matching row)."""
    query = queryset.query
    nested = _nested_reason(query)
    if kind in (COUNT, EXISTS):
        # How many rows a slice or a DISTINCT ON keeps does not depend on which ones.
        return Determinism(nested is None, nested is None, nested or "")
    plain_rows = kind == ROWS and queryset._iterable_class is models.query.ModelIterable
    total, random = total_ordering(query, rows_are_instances=plain_rows)
    reason = nested
    if reason is None and query.combinator:
        for part in query.combined_queries:
            reason = _own_reason(part) or _nested_reason(part)
            if reason:
                reason = f"{query.combinator}() part: {reason}"
                break
    if reason is None and query.distinct_fields and not total:
        reason = "distinct(fields) without a total ordering"
    if reason is None and query.is_sliced and not total:
        filled = (
            kind != ROWS
            or query.low_mark
            or returned is None
            or query.high_mark is None
            or returned >= query.high_mark
        )
        if filled:
            what = "random ordering" if random else "no total ordering"
            reason = f"slice with {what}"
    if reason is not None:
        return Determinism(False, False, reason)
    return Determinism(True, total and _ordered(query), "")


def _own_reason(query: Query) -> str | None:
    """Why a nested query (a subquery, a part of a union) returns rows the data does not fix."""
    if query.is_sliced or query.distinct_fields:
        total, random = total_ordering(query, rows_are_instances=False)
        if not total:
            if query.distinct_fields:
                return "distinct(fields) without a total ordering"
            return f"slice with {'random ordering' if random else 'no total ordering'}"
    return None


def _nested_reason(query: Query) -> str | None:
    """Why a subquery of ``query`` (in a filter, an annotation or the ordering) leaves
    its answer to the database; None if none does."""
    for nested, exists in _nested_queries(query):
        if not exists:  # EXISTS of a slice is EXISTS of the whole query
            own = _own_reason(nested)
            if own:
                return f"subquery: {own}"
        deeper = _nested_reason(nested)
        if deeper:
            return deeper
    return None


def _nested_queries(query: Query) -> Iterator[tuple[Query, bool]]:
    roots: list[Any] = [query.where, *query.annotations.values()]
    roots += [o for o in query.order_by if hasattr(o, "resolve_expression")]
    for root in roots:
        yield from _walk(root)


def _walk(node: Any, depth: int = 0) -> Iterator[tuple[Query, bool]]:
    if node is None or depth > 50:
        return
    if isinstance(node, Exists):
        yield node.query, True
        return
    if isinstance(node, Subquery):
        yield node.query, False
        return
    if isinstance(node, Query):
        yield node, False
        return
    if isinstance(node, WhereNode):
        children = node.children
    else:
        try:
            children = node.get_source_expressions()
        except Exception:
            return
    for child in children:
        yield from _walk(child, depth + 1)


def _ordered(query: Query) -> bool:
    """``QuerySet.ordered`` for a bare query."""
    if query.extra_order_by or query.order_by:
        return True
    return bool(query.default_ordering and query.get_meta().ordering and not query.group_by)


def _ordering(query: Query) -> list[Any]:
    if not _ordered(query):
        return []
    if query.extra_order_by:
        return list(query.extra_order_by)
    if query.order_by:
        return list(query.order_by)
    return list(query.get_meta().ordering)


def total_ordering(query: Query, rows_are_instances: bool) -> tuple[bool, bool]:
    """(the ordering is total, a random term comes before it is)."""
    model = query.model
    if model is None:
        return False, False
    opts = model._meta
    if not _one_row_each(query, rows_are_instances):
        return False, any(_is_random(term) for term in _ordering(query))
    keys = _unique_sets(model)
    columns: set[str] = set()
    for term in _ordering(query):
        if _is_random(term):
            return False, True
        attname = _column(term, query, opts)
        if attname is None:
            continue
        columns.add(attname)
        if any(key <= columns for key in keys):
            return True, False
    return False, False


def _is_random(term: Any) -> bool:
    if term == "?":
        return True
    expression = term.expression if isinstance(term, OrderBy) else term
    return isinstance(expression, Random)


def _column(term: Any, query: Query, opts: Any) -> str | None:
    """The attname of the model's own column ``term`` sorts by, else None."""
    if isinstance(term, str):
        name = term.lstrip("-+")
    else:
        expression = term.expression if isinstance(term, OrderBy) else term
        if isinstance(expression, Col):
            field = expression.target
            local = getattr(field, "model", None)
            if local is not None and local._meta.concrete_model is opts.concrete_model:
                return field.attname
            return None
        named = getattr(expression, "name", None)
        if not isinstance(named, str):
            return None
        name = named
    if name in query.annotations:
        return None
    if name == "pk":
        return opts.pk.attname
    if "__" in name:
        return None
    try:
        field = opts.get_field(name)
    except Exception:
        return None
    if not getattr(field, "concrete", False) or getattr(field, "many_to_many", False):
        return None
    if field.is_relation and name != field.attname:
        related = field.related_model
        if related is not None and related._meta.ordering:
            return None  # sorted by the related model's own ordering
    return field.attname


def _unique_sets(model: type[models.Model]) -> list[frozenset[str]]:
    """Attname sets no two rows share: the key, and unique sets of non-null fields."""
    sets = [frozenset([model._meta.pk.attname])]
    for fields in unique_fields(model):
        if all(not f.null for f in fields):
            sets.append(frozenset(f.attname for f in fields))
    return sets


def _one_row_each(query: Query, rows_are_instances: bool) -> bool:
    """Whether each row of the model appears at most once in the result, so that its key
    tells the result's rows apart.

    A join along a many-valued relation (a reverse foreign key, a many-to-many)
    repeats the row per related row. Model instances repeated that way are equal on
    every compared field, so only values(), values_list() and annotations make ties.
    """
    if rows_are_instances and not query.annotation_select:
        return True
    for join in query.alias_map.values():
        field = getattr(join, "join_field", None)
        if isinstance(field, models.ForeignObjectRel) and not field.field.unique:
            return False
        if getattr(field, "many_to_many", False):
            return False
    return True
