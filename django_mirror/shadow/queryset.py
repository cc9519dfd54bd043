"""The read half of ``MirroredQuerySet``: where a sampled read is timed and handed to
the shadow pool.

Reads end in ``_fetch_all`` (iteration, ``get``, ``first``/``last``, ``values``/
``values_list``, ``in_bulk``) or ask the database directly (``count``, ``exists``,
``aggregate``). ``django_mirror.query`` joins this half to the capture half
(``capture.queryset``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import models

from django_mirror.shadow import reads

T = TypeVar("T")


class ShadowedQuerySet(models.QuerySet):
    """A ``QuerySet`` whose reads, in a sampled shadow-read scope, also run on the other
    store."""

    def _shadowed(self, kind: str, run: Callable[[], T], **details: Any) -> T:
        """``run()`` the read; when sampled, time it and hand the result to a shadow read."""
        read = reads.begin(self, kind)
        if read is None:
            return run()
        for name, value in details.items():
            setattr(read, name, value)
        started = time.perf_counter()
        result = run()
        elapsed = (time.perf_counter() - started) * 1000
        read.submit(self._result_cache if kind == reads.ROWS else result, elapsed)
        return result

    def _fetch_all(self) -> None:
        if self._result_cache is None:
            self._shadowed(reads.ROWS, super()._fetch_all)

    def count(self) -> int:
        if self._result_cache is not None:
            return len(self._result_cache)
        return self._shadowed(reads.COUNT, super().count)

    def exists(self) -> bool:
        if self._result_cache is not None:
            return bool(self._result_cache)
        return self._shadowed(reads.EXISTS, super().exists)

    def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        run = functools.partial(super().aggregate, *args, **kwargs)
        return self._shadowed(reads.AGGREGATE, run, aggregate=(args, kwargs))
