"""A shadowed query kept in its mismatch record, so the admin's Re-check can run it again.

The record's ``query`` is the SQL shape without parameters (what groups mismatches in
Sentry); a query runs again only with its parameters, so the record also keeps the
query itself: Django's pickled ``Query`` (the documented way to keep a query for
later), compressed, and signed with ``SECRET_KEY`` so that only what django-mirror
wrote is ever unpickled. It is never shown (the admin reads the record's values, not
this) and lives in the source database, beside the rows it filters on.
"""

from __future__ import annotations

import base64
import pickle
import zlib
from typing import Any

from django.core import signing
from django.db import models

SALT = "django_mirror.shadow.rerun"
#: Queries larger than this (a ``pk__in`` of thousands of keys) are not kept.
MAX_SIZE = 64_000
VERSION = 1


class CannotRerun(Exception):
    """The record holds no query that can run again here."""


def dumps(
    queryset: models.QuerySet, kind: str, aggregate: tuple[tuple[Any, ...], dict[str, Any]]
) -> str | None:
    """The signed form of a query to run again later; None if it cannot be kept."""
    try:
        payload = {
            "v": VERSION,
            "kind": kind,
            "query": queryset.query,
            "iterable": queryset._iterable_class,
            "fields": queryset._fields,
            "aggregate": aggregate,
        }
        data = zlib.compress(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:  # an expression that does not pickle: re-checked by its rows only
        return None
    text = base64.urlsafe_b64encode(data).decode("ascii")
    if len(text) > MAX_SIZE:
        return None
    return signing.Signer(salt=SALT).sign(text)


def loads(signed: Any) -> tuple[models.QuerySet, str, tuple[tuple[Any, ...], dict[str, Any]]]:
    """(the query as a plain ``QuerySet``, its read kind, its aggregate arguments)."""
    if not isinstance(signed, str) or not signed:
        raise CannotRerun("no query was kept")
    try:
        text = signing.Signer(salt=SALT).unsign(signed)
    except signing.BadSignature as exc:
        raise CannotRerun("the kept query's signature does not match SECRET_KEY") from exc
    try:
        payload = pickle.loads(zlib.decompress(base64.urlsafe_b64decode(text)))
        if payload.get("v") != VERSION:
            raise CannotRerun(f"kept by another version ({payload.get('v')!r})")
        query = payload["query"]
        # A plain QuerySet: running it again is never itself shadowed.
        queryset = models.QuerySet(model=query.model, query=query)
        queryset._iterable_class = payload["iterable"]
        queryset._fields = payload["fields"]
    except CannotRerun:
        raise
    except Exception as exc:  # a model or field since removed, another Django
        raise CannotRerun(f"the kept query cannot be loaded ({type(exc).__name__})") from exc
    return queryset, str(payload["kind"]), payload["aggregate"]
