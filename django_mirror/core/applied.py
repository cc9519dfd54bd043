"""The mark django-mirror leaves on a transaction it applied itself (replay, live apply,
copy) in a database whose log ``mirror_capture`` reads, so capture passes over it rather
than ship the same rows back as new writes."""

from __future__ import annotations

from typing import Any

#: Prefix of the transactional logical-decoding message that carries the mark.
APPLIED_PREFIX = "django_mirror.applied"


def mark(connection: Any) -> None:
    """Mark the transaction open on ``connection`` (PostgreSQL): one log message, sent
    with the transaction's changes and only if it commits."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_logical_emit_message(true, %s, '')", [APPLIED_PREFIX])
