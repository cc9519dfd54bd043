"""The write side in the app's process: each ORM write (heard of by ``signals`` and
``queryset``) has its rows become events in the source database's outbox, in the
writing transaction (``record``), from the instance where it can (``core.images``),
stored by ``outbox``."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # ``django_mirror.capture.CaptureError`` and ``.paused`` were public when capture was
    # one module; lazy, so importing ``capture.outbox`` alone loads nothing more.
    if name in ("CaptureError", "paused"):
        from django_mirror.capture import record

        return getattr(record, name)
    raise AttributeError(f"module 'django_mirror.capture' has no attribute {name!r}")
