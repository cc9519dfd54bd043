"""A ``DATABASES`` alias as target: same tables as the source, plus ``RowVersion``.

Writes go through the database driver in batches (``executemany``) rather than
model instances: replay is a bulk loader, and Django's per-object machinery would
cost more than the database does.

One module per part: ``columns`` and ``rows`` turn row images into driver parameters,
``statements`` writes them, ``versions`` decides which events win, ``clashes`` settles
unique values held under another key, ``apply`` and ``copy`` are the two ways rows come
in, and ``target`` assembles ``DatabaseTarget`` from them.
"""

from __future__ import annotations

from django_mirror.targets.database.apply import APPLY_ERRORS, FAILED_EVENT_PASSES, UPSERT_VENDORS
from django_mirror.targets.database.copy import COPY_BLOCK_BYTES
from django_mirror.targets.database.rows import UnknownModel
from django_mirror.targets.database.target import DatabaseTarget

__all__ = [
    "APPLY_ERRORS",
    "COPY_BLOCK_BYTES",
    "DatabaseTarget",
    "FAILED_EVENT_PASSES",
    "UPSERT_VENDORS",
    "UnknownModel",
]
