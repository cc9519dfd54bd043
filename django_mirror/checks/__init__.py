"""System checks for ``DJANGO_MIRROR``; every id is listed in ``docs/checks.md``.

Importing this package registers each check once (``apps.py`` does, when Django is
ready) and hooks the settings checks to the first write of a process.
"""

from __future__ import annotations

from django_mirror.checks.capture import check_capture, check_wal_source
from django_mirror.checks.fields import check_database_on_delete, check_field_values
from django_mirror.checks.first_write import log_errors_at_first_lookup
from django_mirror.checks.groups import check_group_phases
from django_mirror.checks.models import _pk_refusal
from django_mirror.checks.project import (
    TESTED_DJANGO,
    check_django_version,
    check_middleware,
    check_router,
    check_sqlite_options,
)
from django_mirror.checks.setting import check_settings

__all__ = [
    "TESTED_DJANGO",
    "_pk_refusal",
    "check_capture",
    "check_database_on_delete",
    "check_django_version",
    "check_field_values",
    "check_group_phases",
    "check_middleware",
    "check_router",
    "check_settings",
    "check_sqlite_options",
    "check_wal_source",
    "log_errors_at_first_lookup",
]
