"""The project around the setting: the router (E018, W004), the shadow-read middleware
(W003), SQLite's transaction mode (W006) and the Django release (W007)."""

from __future__ import annotations

from typing import Any

import django
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from django_mirror.config import conf

ROUTER = "django_mirror.router.MirrorRouter"


@register(Tags.models, "django_mirror")
def check_router(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """Promotion routes a model to its target; without the router it cannot happen."""
    if ROUTER in getattr(settings, "DATABASE_ROUTERS", []):
        return []
    movable = sorted({c.label for c in conf.mirrored_models().values() if c.target_alias})
    if not movable:
        return []
    promoted = [c.label for c in conf.mirrored_models().values() if c.phase == "promoted"]
    if promoted:
        return [
            Error(
                f"{', '.join(sorted(set(promoted)))} are promoted in the settings, but {ROUTER} "
                "is not in DATABASE_ROUTERS: their writes would go to the old store "
                "uncaptured.",
                hint=f"Add {ROUTER!r} to DATABASE_ROUTERS.",
                id="django_mirror.E018",
            )
        ]
    return [
        Warning(
            f"{ROUTER} is not in DATABASE_ROUTERS: promoting {', '.join(movable)} will be "
            "refused, and migrate --database=<target> creates every table there.",
            hint=f"Add {ROUTER!r} to DATABASE_ROUTERS before step 6 of the runbook.",
            id="django_mirror.W004",
        )
    ]


@register(Tags.models, "django_mirror")
def check_middleware(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """Shadow reads of requests need the middleware; without it a rate does nothing."""
    middleware = "django_mirror.middleware.ShadowReadMiddleware"
    if middleware in getattr(settings, "MIDDLEWARE", []):
        return []
    sampled = [c.label for c in conf.mirrored_models().values() if c.owner is None and c.shadowing]
    if not sampled:
        return []
    return [
        Warning(
            f"{', '.join(sorted(set(sampled)))} have a shadow_read_rate, but "
            f"{middleware} is not in MIDDLEWARE: only reads inside shadow_reads() blocks "
            "are shadowed.",
            hint=f"Add {middleware!r} to MIDDLEWARE.",
            id="django_mirror.W003",
        )
    ]


@register(Tags.models, "django_mirror")
def check_sqlite_options(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """django-mirror's threads write to the source (the relay after commit, the dashboard's
    figures): on SQLite, one more writer beside the app's own requests."""
    if not conf.get_settings().models:
        return []
    warnings = []
    for alias in sorted(conf.database_aliases()):
        database = settings.DATABASES.get(alias, {})
        if not str(database.get("ENGINE", "")).endswith("sqlite3"):
            continue
        mode = str((database.get("OPTIONS") or {}).get("transaction_mode") or "DEFERRED")
        if mode.upper() == "IMMEDIATE":
            continue
        warnings.append(
            Warning(
                f"SQLite database {alias!r} runs transactions in {mode.upper()} mode: one of "
                "yours that reads before it writes fails at once with 'database is locked' "
                "while another connection writes, and django-mirror's relay and dashboard "
                "threads write to it.",
                hint=f"Set DATABASES[{alias!r}]['OPTIONS'] = "
                "{'transaction_mode': 'IMMEDIATE', 'timeout': 20}: transactions then wait "
                "for the write lock instead (see docs/guarantees.md).",
                id="django_mirror.W006",
            )
        )
    return warnings


#: The Django releases the test suite runs on, ``[lowest, past the highest)``: the range
#: pyproject.toml declares (tests/test_packaging.py keeps the two equal).
TESTED_DJANGO = ((5, 2), (7, 0))


@register(Tags.compatibility, "django_mirror")
def check_django_version(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """Capture wraps ORM internals (``Model._save_table``, the deletion collector): a Django
    it was not tested on may write rows in ways it does not see."""
    low, high = TESTED_DJANGO
    if low <= django.VERSION[:2] < high:
        return []
    tested = f">={low[0]}.{low[1]},<{high[0]}"
    return [
        Warning(
            f"Django {django.get_version()} is outside the range django-mirror is tested "
            f"with ({tested}): some writes may go uncaptured.",
            hint=f"Run Django {tested}, or a django-mirror release that supports "
            f"Django {django.get_version()}.",
            id="django_mirror.W007",
        )
    ]
