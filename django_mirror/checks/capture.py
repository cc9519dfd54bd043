"""``CAPTURE``: its value (E029), a PostgreSQL source for ``"wal"`` (E030), and, where
the database checks run (``check --database``, ``migrate``, ``mirror_capture``), what
logical decoding needs on each database whose log is read (the source, and PostgreSQL
database targets): ``wal_level`` (E031), the publication and the slot (W009), and the
WAL the slot retains against ``WAL["MAX_RETAINED_BYTES"]`` (W010)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.db import DatabaseError, connections

from django_mirror.capture.wal import slot
from django_mirror.config import conf


def _wal_aliases() -> list[str]:
    """The aliases whose log ``mirror_capture`` reads, when ``CAPTURE = "wal"`` is set
    and the source can be read so."""
    raw = getattr(settings, "DJANGO_MIRROR", None)
    if not isinstance(raw, dict) or raw.get("CAPTURE") != "wal":
        return []
    aliases = conf.log_captured_aliases()
    return sorted(aliases) if conf.source_alias() in aliases else []


@register(Tags.models, "django_mirror")
def check_capture(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """A capture mode that is not one of the two, or the log of a database with none."""
    raw = getattr(settings, "DJANGO_MIRROR", None)
    if not isinstance(raw, dict) or "CAPTURE" not in raw:
        return []
    mode = raw["CAPTURE"]
    if mode not in conf.CAPTURE_MODES:
        return [
            Error(
                f"DJANGO_MIRROR['CAPTURE'] is {mode!r}.",
                hint="Use 'orm' (the default) or 'wal' (PostgreSQL sources only).",
                id="django_mirror.E029",
            )
        ]
    alias = conf.source_alias()
    if mode == "wal" and alias in connections and connections[alias].vendor != "postgresql":
        return [
            Error(
                f"DJANGO_MIRROR['CAPTURE'] is 'wal', but the source {alias!r} is "
                f"{connections[alias].vendor}, not PostgreSQL: nothing would be captured.",
                hint="Use CAPTURE 'orm' with this source.",
                id="django_mirror.E030",
            )
        ]
    return []


@register(Tags.database, "django_mirror")
def check_wal_source(
    app_configs: Any = None, databases: Iterable[str] | None = None, **kwargs: Any
) -> list[Any]:
    """What ``mirror_capture`` needs on each database whose log it reads: asked of the
    database, so only when the checks may query it."""
    problems: list[Any] = []
    for alias in _wal_aliases():
        if alias in (databases or ()):
            problems += _check_wal_database(alias)
    return problems


def _check_wal_database(alias: str) -> list[Any]:
    role = (
        "source" if alias == conf.source_alias() else "target (where promoted models are written)"
    )
    try:
        found = slot.state(alias)
    except DatabaseError as exc:
        return [
            Warning(
                f"Could not read the logical decoding state of {alias!r}: {exc}",
                id="django_mirror.W009",
            )
        ]
    problems: list[Any] = []
    if found.wal_level != "logical":
        problems.append(
            Error(
                f"DJANGO_MIRROR['CAPTURE'] is 'wal', but the {role} {alias!r} runs with "
                f"wal_level = {found.wal_level}: its log holds no rows to decode.",
                hint="ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL.",
                id="django_mirror.E031",
            )
        )
    missing = []
    name = slot.slot_name(alias)
    if not found.publication:
        missing.append(f"publication {slot.PUBLICATION!r}")
    elif sorted(found.published_tables) != slot.tables(alias):
        missing.append(f"publication {slot.PUBLICATION!r} for the mirrored tables as they are")
    if not found.slot:
        missing.append(f"replication slot {name!r}")
    if missing:
        problems.append(
            Warning(
                f"{alias!r} lacks the {' and the '.join(missing)}: mirror_capture has "
                "nothing to read.",
                hint="Run manage.py mirror_setup (it creates the publication FOR TABLE the "
                "mirrored tables and SELECT pg_create_logical_replication_slot("
                f"'{name}', 'pgoutput')).",
                id="django_mirror.W009",
            )
        )
    over = over_limit(found.lag_bytes, name)
    if over:
        problems.append(Warning(over, hint=RETAINED_HINT, id="django_mirror.W010"))
    return problems


RETAINED_HINT = (
    "Run manage.py mirror_capture (it frees the WAL it has read), or, if capture is "
    "over, manage.py mirror_capture --drop-slot."
)


def over_limit(retained: int | None, name: str) -> str | None:
    """The warning when the slot retains more WAL than ``WAL["MAX_RETAINED_BYTES"]``:
    a slot nobody reads keeps every later log segment and can fill the source's disk."""
    limit = conf.get_settings().wal.max_retained_bytes
    if retained is None or retained <= limit:
        return None
    return (
        f"The replication slot {name!r} retains {retained} bytes of WAL, more than "
        f"DJANGO_MIRROR['WAL']['MAX_RETAINED_BYTES'] ({limit})."
    )
