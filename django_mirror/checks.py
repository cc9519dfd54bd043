"""System checks for ``DJANGO_MIRROR``; every id is listed in ``docs/checks.md``."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.db import models
from django.utils.module_loading import import_string

from django_mirror import conf

SUPPORTED_PK_TYPES = (
    models.AutoField,
    models.BigAutoField,
    models.SmallAutoField,
    models.IntegerField,
    models.CharField,
    models.UUIDField,
)
MODEL_OPTIONS = set(conf.DEFAULT_MODEL)
RELAY_MODES = ("thread", "sync", "off")


def _importable(path: Any) -> bool:
    try:
        import_string(str(path))
    except ImportError:
        return False
    return True


def _check_stream(stream: dict[str, Any]) -> list[Any]:
    errors: list[Any] = []
    if not _importable(stream.get("BACKEND")):
        errors.append(
            Error(
                f"DJANGO_MIRROR['STREAM']['BACKEND'] {stream.get('BACKEND')!r} cannot be imported.",
                hint="Use 'django_mirror.streams.KinesisStream' or the dotted path of your class.",
                id="django_mirror.E008",
            )
        )
    if stream.get("BACKEND") == conf.DEFAULT_STREAM["BACKEND"]:
        for option in ("stream_name", "region_name"):
            if not stream["OPTIONS"].get(option):
                errors.append(
                    Error(
                        f"DJANGO_MIRROR['STREAM']['OPTIONS'] lacks {option!r}.",
                        id="django_mirror.E009",
                    )
                )
    return errors


def _check_target(label: str, target: Any, source: str) -> list[Any]:
    if target is None:
        return [
            Error(
                f"DJANGO_MIRROR['MODELS'][{label!r}] has no 'target'.",
                hint="Name a DATABASES alias or give {'BACKEND': ..., 'OPTIONS': {...}}.",
                id="django_mirror.E004",
            )
        ]
    if isinstance(target, str):
        if target not in settings.DATABASES:
            return [
                Error(
                    f"Target {target!r} of {label} is not a DATABASES alias.",
                    id="django_mirror.E004",
                )
            ]
        if target == source:
            return [
                Error(
                    f"Target of {label} is the source alias {source!r}.",
                    hint="Mirror into a different DATABASES alias.",
                    id="django_mirror.E005",
                )
            ]
        return []
    if not isinstance(target, dict) or not _importable(target.get("BACKEND")):
        return [
            Error(
                f"Target backend of {label} cannot be imported: {target!r}.",
                id="django_mirror.E008",
            )
        ]
    return _check_backend(label, target)


def _check_backend(label: str, target: dict[str, Any]) -> list[Any]:
    """The backend is a ``Target`` that accepts its OPTIONS (and, for DynamoDB, makes a
    valid table name for the model): made once here, as replay will make it."""
    from django_mirror.targets import DynamoDBTarget, Target

    backend = import_string(target["BACKEND"])
    problem = None
    if not (isinstance(backend, type) and issubclass(backend, Target)):
        problem = f"{target['BACKEND']} is not a django_mirror.targets.Target"
    else:
        try:
            instance = backend(**(target.get("OPTIONS") or {}))
            if isinstance(instance, DynamoDBTarget):
                instance.table(label)
        except (TypeError, ValueError, LookupError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
    if problem is None:
        return []
    return [
        Error(
            f"Target of {label} cannot be used: {problem}.",
            hint="See docs/targets.md for each backend's OPTIONS.",
            id="django_mirror.E019",
        )
    ]


def _check_model(label: str, opts: Any, source: str) -> list[Any]:
    if not isinstance(opts, dict):
        return [
            Error(f"DJANGO_MIRROR['MODELS'][{label!r}] must be a dict.", id="django_mirror.E001")
        ]
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError):
        return [
            Error(
                f"DJANGO_MIRROR['MODELS'] names {label!r}, which is not an installed model.",
                hint="Use 'app_label.ModelName'.",
                id="django_mirror.E002",
            )
        ]
    errors: list[Any] = []
    unknown = set(opts) - MODEL_OPTIONS
    if unknown:
        errors.append(
            Error(
                f"{label} has unknown options: {', '.join(sorted(unknown))}.",
                hint=f"Known options: {', '.join(sorted(MODEL_OPTIONS))}.",
                id="django_mirror.E013",
            )
        )
    merged = {**conf.DEFAULT_MODEL, **opts}
    errors += _check_target(label, merged["target"], source)
    if merged["phase"] not in conf.PHASES:
        errors.append(
            Error(
                f"{label} has unknown phase {merged['phase']!r}.",
                hint=f"Use one of {', '.join(conf.PHASES)}.",
                id="django_mirror.E006",
            )
        )
    rate = merged["shadow_read_rate"]
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0.0 <= rate <= 1.0:
        errors.append(
            Error(
                f"{label}: shadow_read_rate {rate!r} is not within 0.0..1.0.",
                id="django_mirror.E007",
            )
        )
    names = {f.name for f in model._meta.concrete_fields} | {
        f.attname for f in model._meta.concrete_fields
    }
    for option in ("exclude_fields", "redact_fields"):
        for name in merged[option] or ():
            if name not in names:
                errors.append(
                    Error(
                        f"{label}: {option} names {name!r}, which is not a field of the model.",
                        id="django_mirror.E010",
                    )
                )
    if model._meta.pk.name in (merged["exclude_fields"] or ()):
        errors.append(
            Error(f"{label}: the primary key cannot be excluded.", id="django_mirror.E010")
        )
    from django_mirror.query import MirroredQuerySet

    if not isinstance(model._default_manager.all(), MirroredQuerySet):
        errors.append(
            Error(
                f"The default manager of {label} does not use django_mirror.MirroredQuerySet, "
                "so its update(), bulk_create() and bulk_update() would not be captured.",
                hint="objects = django_mirror.MirroredManager() (or your manager "
                "built from a MirroredQuerySet subclass).",
                obj=model,
                id="django_mirror.E011",
            )
        )
    pk = model._meta.pk
    if getattr(model._meta, "pk_fields", [pk]) != [pk] or not isinstance(pk, SUPPORTED_PK_TYPES):
        errors.append(
            Error(
                f"{label} has a primary key of type {type(pk).__name__}, which cannot be mirrored.",
                hint="Supported: integer, char and UUID primary keys on a single field.",
                obj=model,
                id="django_mirror.E012",
            )
        )
    if merged["compare"] is not None and not _importable(merged["compare"]):
        errors.append(
            Error(
                f"{label}: compare {merged['compare']!r} cannot be imported.",
                id="django_mirror.E014",
            )
        )
    for m2m in model._meta.local_many_to_many:
        through = m2m.remote_field.through
        if not through._meta.auto_created and conf.model_config(through) is None:
            errors.append(
                Warning(
                    f"{label}.{m2m.name} goes through {through._meta.label}, which is not "
                    "mirrored: changes to that relation will not reach the target.",
                    hint=f"Add {through._meta.label!r} to DJANGO_MIRROR['MODELS'].",
                    id="django_mirror.W001",
                )
            )
    return errors


@register(Tags.models, "django_mirror")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
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
    errors: list[Any] = []
    if mirror.source not in settings.DATABASES:
        errors.append(
            Error(
                f"DJANGO_MIRROR['SOURCE'] {mirror.source!r} is not a DATABASES alias.",
                id="django_mirror.E003",
            )
        )
    errors += _check_stream(mirror.stream)
    if mirror.relay["ON_COMMIT"] not in RELAY_MODES:
        errors.append(
            Error(
                f"DJANGO_MIRROR['RELAY']['ON_COMMIT'] is {mirror.relay['ON_COMMIT']!r}.",
                hint=f"Use one of {', '.join(RELAY_MODES)}.",
                id="django_mirror.E015",
            )
        )
    errors += _check_options("SHADOW", mirror.shadow, SHADOW_OPTIONS, "django_mirror.E016")
    errors += _check_options("PHASES", mirror.phases, PHASES_OPTIONS, "django_mirror.E017")
    for label, opts in mirror.models.items():
        errors += _check_model(label, opts, mirror.source)
    raw_repositories = raw.get("REPOSITORIES") or {}
    if not isinstance(raw_repositories, dict):
        errors.append(
            Error("DJANGO_MIRROR['REPOSITORIES'] must be a dict.", id="django_mirror.E020")
        )
    else:
        for path, opts in raw_repositories.items():
            errors += _check_repository(path, opts)
    return errors


REPOSITORY_OPTIONS = {"source", "targets", "phase", "shadow_read_rate"}


def _check_repository(path: str, opts: Any) -> list[Any]:
    """An interface tagged with @repository, implementations that import and have its
    methods, a known phase and a rate within 0..1."""
    from django_mirror.repositories.interface import spec_of
    from django_mirror.repositories.registry import PHASES as REPOSITORY_PHASES

    where = f"DJANGO_MIRROR['REPOSITORIES'][{path!r}]"

    def error(message: str, check_id: str = "django_mirror.E020") -> list[Any]:
        return [Error(f"{where}: {message}", hint="See docs/repositories.md.", id=check_id)]

    if not isinstance(opts, dict):
        return error("must be a dict")
    unknown = set(opts) - REPOSITORY_OPTIONS
    if unknown:
        return error(f"unknown options {sorted(unknown)}")
    try:
        spec = spec_of(import_string(path))
    except (ImportError, TypeError) as exc:
        return error(f"not a @repository interface ({exc})")
    errors: list[Any] = []
    if opts.get("phase", "capture") not in REPOSITORY_PHASES:
        errors += error(
            f"phase {opts.get('phase')!r} is none of {', '.join(REPOSITORY_PHASES)}",
            "django_mirror.E021",
        )
    rate = opts.get("shadow_read_rate", 0.0)
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0.0 <= rate <= 1.0:
        errors += error(f"shadow_read_rate {rate!r} is not within 0.0..1.0", "django_mirror.E021")
    targets = opts.get("targets") or {}
    if not isinstance(targets, dict):
        return errors + error("'targets' must map names to dotted paths", "django_mirror.E022")
    for role, implementation in [("source", opts.get("source")), *targets.items()]:
        try:
            cls = import_string(str(implementation))
        except ImportError as exc:
            errors += error(
                f"{role} {implementation!r} cannot be imported ({exc})", "django_mirror.E022"
            )
            continue
        missing = [m for m in spec.methods if not callable(getattr(cls, m, None))]
        if missing:
            errors += error(
                f"{role} {implementation!r} lacks {', '.join(sorted(missing))}",
                "django_mirror.E022",
            )
    return errors


#: SHADOW option -> (type, smallest allowed value, largest allowed value).
SHADOW_OPTIONS: dict[str, tuple[type, float, float]] = {
    "RECHECK_DELAY": (float, 0.0, float("inf")),
    "TIMEOUT": (float, 0.001, float("inf")),
    "POOL_SIZE": (int, 1, 256),
    "QUEUE_SIZE": (int, 1, float("inf")),
    "CONTROL_RATE": (float, 0.0, 1.0),
    "STATS_INTERVAL": (float, 0.1, float("inf")),
}


#: PHASES option -> (type, smallest allowed value, largest allowed value).
PHASES_OPTIONS: dict[str, tuple[type, float, float]] = {
    "REFRESH": (float, 0.1, 5.0),
    "MAX_REPLAY_LAG": (float, 0.0, float("inf")),
    "VERIFY_WITHIN": (float, 0.0, float("inf")),
    "CLEAN_FOR": (float, 0.0, float("inf")),
    "KEY_GAP": (int, 0, 2**31),
}


def _check_options(
    name: str, given: dict[str, Any], known: dict[str, tuple[type, float, float]], check_id: str
) -> list[Any]:
    """A dict of numeric options: every key known, every value a number in range."""
    errors: list[Any] = []
    for key, value in given.items():
        if key not in known:
            errors.append(
                Error(
                    f"DJANGO_MIRROR[{name!r}] has unknown option {key!r}.",
                    hint=f"Known options: {', '.join(known)}.",
                    id=check_id,
                )
            )
            continue
        kind, low, high = known[key]
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
