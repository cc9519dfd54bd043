"""The settings checks at the first write of a process that runs no system checks."""

from __future__ import annotations

import logging

from django.conf import settings

from django_mirror.checks.capture import check_capture
from django_mirror.checks.fields import check_database_on_delete
from django_mirror.checks.setting import check_settings
from django_mirror.config import conf

logger = logging.getLogger("django_mirror")


def log_errors_at_first_lookup() -> None:
    """Django runs system checks in ``manage.py`` commands only, never in a WSGI or ASGI
    server: there, the first write of a process logs each settings error at ERROR, so a
    bad setting shows at once, not as events that never ship."""
    try:
        silenced = set(getattr(settings, "SILENCED_SYSTEM_CHECKS", ()))
        for message in [*check_settings(), *check_capture(), *check_database_on_delete()]:
            if message.is_serious() and message.id not in silenced:
                logger.error("django-mirror is misconfigured: %s", message)
    except Exception:  # a check that fails must not fail the write that ran it
        logger.warning("django-mirror: its settings could not be checked", exc_info=True)


conf.first_lookup_hooks.append(log_errors_at_first_lookup)
