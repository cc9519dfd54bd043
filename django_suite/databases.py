"""The ``DATABASES`` of a suite run, per backend, as Django's own CI sets them.

Aliases ``default`` and ``other`` are the two Django's tests use; the mirrored run adds
``mirror_target``, the mirrored models' target, which no Django test touches. On
PostgreSQL the names start with ``djsuite_``: the runner creates ``test_djsuite_*``
from them and drops them again.
"""

from __future__ import annotations

import os
import socket
from typing import Any

BACKENDS = ("sqlite", "postgresql")
TARGET_ALIAS = "mirror_target"
PG_HOST = os.environ.get("DJANGO_SUITE_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("DJANGO_SUITE_PG_PORT", "5432"))
PG_USER = os.environ.get("DJANGO_SUITE_PG_USER", "postgres")


def postgres_reachable(timeout: float = 1.0) -> bool:
    """True when something accepts TCP connections on the PostgreSQL port."""
    try:
        socket.create_connection((PG_HOST, PG_PORT), timeout=timeout).close()
    except OSError:
        return False
    return True


def databases(backend: str, mirrored: bool) -> dict[str, dict[str, Any]]:
    aliases = ["default", "other"] + ([TARGET_ALIAS] if mirrored else [])
    if backend == "sqlite":
        # In-memory, as Django's tests/test_sqlite.py; the test runner shares each one
        # between the threads of the process (a ``cache=shared`` URI).
        return {alias: {"ENGINE": "django.db.backends.sqlite3"} for alias in aliases}
    if backend == "postgresql":
        return {
            alias: {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": f"djsuite_{alias}",
                "USER": PG_USER,
                "HOST": PG_HOST,
                "PORT": PG_PORT,
            }
            for alias in aliases
        }
    raise ValueError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
