"""How many rows or keys one SQL statement may carry, and cutting lists to that size."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

from django.db import connections

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def unique(items: Iterable[T]) -> list[T]:
    """``items`` without repeats, in order; also for unhashable values (a custom primary
    key field's objects may define ``__eq__`` and no ``__hash__``)."""
    items = list(items)
    try:
        return list(dict.fromkeys(items))
    except TypeError:
        kept: list[T] = []
        for item in items:
            if item not in kept:
                kept.append(item)
        return kept


def keys_per_statement(using: str) -> int:
    """Keys in one ``IN (...)`` list, within the backend's parameter limit."""
    return max(1, min(500, (connections[using].features.max_query_params or 1000) - 10))


def rows_per_statement(using: str, columns: int) -> int:
    """Rows in one multi-row ``VALUES``, within the backend's parameter limit."""
    limit = connections[using].features.max_query_params or 10_000
    return max(1, min(1000, limit // columns))
