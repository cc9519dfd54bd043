"""django-mirror: move a Django service's data to another store with zero downtime."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["MirroredManager", "MirroredQuerySet", "paused"]


def __getattr__(name: str) -> Any:
    # Lazy, so ``import django_mirror`` in settings.py does not touch the ORM.
    if name in ("MirroredQuerySet", "MirroredManager"):
        from django_mirror import query

        return getattr(query, name)
    if name == "paused":
        from django_mirror.capture.record import paused

        return paused
    raise AttributeError(f"module 'django_mirror' has no attribute {name!r}")
