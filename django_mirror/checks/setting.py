"""The ``DJANGO_MIRROR`` setting as a whole: its shape and keys, ``SOURCE``, ``RELAY``,
``REPLAY``, ``SHADOW`` and ``PHASES``, then each stream, model and repository entry."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from django_mirror.checks.models import model_errors
from django_mirror.checks.options import unknown_keys
from django_mirror.checks.repositories import repository_errors
from django_mirror.checks.stream import stream_errors
from django_mirror.config import conf

#: The values ``RELAY["ON_COMMIT"]`` may take.
RELAY_MODES = ("thread", "sync", "off")


#: Each section's numeric options and their allowed range (smallest, largest); an
#: option's type is its field's in ``config.conf``.
RANGES: dict[type, dict[str, tuple[float, float]]] = {
    conf.RelaySettings: {
        "BATCH_SIZE": (1, float("inf")),
        "LEASE_SECONDS": (0.001, float("inf")),
        "LINGER": (0.0, 10.0),
    },
    conf.ReplaySettings: {
        "BATCH_SIZE": (1, 10_000),  # Kinesis returns at most 10,000 records a read
        "LEASE_SECONDS": (0.001, float("inf")),
        "IDLE_SLEEP": (0.0, float("inf")),
        "HEAL_INTERVAL": (0.0, float("inf")),
    },
    conf.ShadowSettings: {
        "RECHECK_DELAY": (0.0, float("inf")),
        "TIMEOUT": (0.001, float("inf")),
        "POOL_SIZE": (1, 256),
        "QUEUE_SIZE": (1, float("inf")),
        "CONTROL_RATE": (0.0, 1.0),
        "STATS_INTERVAL": (0.1, float("inf")),
    },
    conf.PhasesSettings: {
        "REFRESH": (0.1, 5.0),
        "MAX_REPLAY_LAG": (0.0, float("inf")),
        "VERIFY_WITHIN": (0.0, float("inf")),
        "CLEAN_FOR": (0.0, float("inf")),
        "KEY_GAP": (0, 2**31),
    },
    conf.WalSettings: {
        "MAX_RETAINED_BYTES": (1, float("inf")),
    },
}

#: Section of ``DJANGO_MIRROR`` -> (its settings class, the id of its check).
SECTIONS = {
    "RELAY": (conf.RelaySettings, "django_mirror.E015"),
    "REPLAY": (conf.ReplaySettings, "django_mirror.E025"),
    "SHADOW": (conf.ShadowSettings, "django_mirror.E016"),
    "PHASES": (conf.PhasesSettings, "django_mirror.E017"),
    "WAL": (conf.WalSettings, "django_mirror.E032"),
}


def section_errors(name: str, given: Any) -> list[Any]:
    """One section as written: every key known, every numeric option a number in its
    range (reading the setting keeps the default for one that is not, so only this
    check tells)."""
    section, check_id = SECTIONS[name]
    errors = unknown_keys(f"DJANGO_MIRROR[{name!r}]", given, conf.section_keys(section), check_id)
    if not isinstance(given, dict):
        return errors
    for key, value in given.items():
        if key not in RANGES[section]:
            continue
        low, high = RANGES[section][key]
        kind = type(getattr(section, key.lower()))
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (kind is int and not isinstance(value, int)) or not low <= value <= high:
            errors.append(
                Error(
                    f"DJANGO_MIRROR[{name!r}][{key!r}] is {value!r}.",
                    hint=f"Use {'an integer' if kind is int else 'a number'} from {low} to {high}.",
                    id=check_id,
                )
            )
    return errors


@register(Tags.models, "django_mirror")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """Every part of ``DJANGO_MIRROR`` as written; the other checks take it as valid."""
    raw = getattr(settings, "DJANGO_MIRROR", None)
    if raw is None:
        return [
            Warning(
                "DJANGO_MIRROR is not set; nothing is mirrored.",
                id="django_mirror.W002",
            )
        ]
    if not isinstance(raw, dict) or not isinstance(raw.get("MODELS", {}), dict):
        return [Error("DJANGO_MIRROR and its 'MODELS' must be dicts.", id="django_mirror.E001")]
    mirror = conf.get_settings()
    errors = unknown_keys("DJANGO_MIRROR", raw, conf.SETTINGS_KEYS, "django_mirror.E023")
    if mirror.source not in settings.DATABASES:
        errors.append(
            Error(
                f"DJANGO_MIRROR['SOURCE'] {mirror.source!r} is not a DATABASES alias.",
                id="django_mirror.E003",
            )
        )
    errors += stream_errors(raw.get("STREAM"), mirror.stream)
    for name in SECTIONS:
        errors += section_errors(name, raw.get(name))
    if mirror.relay.on_commit not in RELAY_MODES:
        errors.append(
            Error(
                f"DJANGO_MIRROR['RELAY']['ON_COMMIT'] is {mirror.relay.on_commit!r}.",
                hint=f"Use one of {', '.join(RELAY_MODES)}.",
                id="django_mirror.E015",
            )
        )
    for label, opts in mirror.models.items():
        errors += model_errors(label, opts, mirror.source)
    raw_repositories = raw.get("REPOSITORIES") or {}
    if not isinstance(raw_repositories, dict):
        errors.append(
            Error("DJANGO_MIRROR['REPOSITORIES'] must be a dict.", id="django_mirror.E020")
        )
    else:
        for path, opts in raw_repositories.items():
            errors += repository_errors(path, opts)
    return errors
