"""System checks for ``DJANGO_MIRROR``; every id is listed in ``docs/checks.md``."""

from __future__ import annotations

import datetime as dt
import difflib
import inspect
import logging
import uuid
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import django
from django.apps import apps
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.db import connections, models
from django.db.models import deletion
from django.utils.module_loading import import_string

from django_mirror.config import conf
from django_mirror.core.events import encode_column

logger = logging.getLogger("django_mirror")

SUPPORTED_PK_TYPES = (
    models.AutoField,
    models.BigAutoField,
    models.SmallAutoField,
    models.IntegerField,
    models.CharField,
    models.UUIDField,
)
#: Longest key text the version and dead-letter tables hold (``RowVersion.pk_value``).
MAX_PK_TEXT = 255
MODEL_OPTIONS = set(conf.DEFAULT_MODEL)
RELAY_MODES = ("thread", "sync", "off")


def _pk_refusal(model: type[models.Model]) -> str | None:
    """Why the model's primary key cannot key its rows' events and versions, if it
    cannot: every store must find a row by one exact text of its key."""
    pk = model._meta.pk
    if getattr(model._meta, "pk_fields", [pk]) != [pk]:
        return "a composite key has no single text that events and versions are keyed by"
    if pk.remote_field is not None:
        return (
            "a multi-table child's key is its parent's row; its row spans two tables that "
            "are captured apart (mirror the parent: it is captured when a child is saved)"
        )
    if isinstance(pk, (models.DecimalField, models.FloatField)):
        return "one number has several texts (1.0, 1.00) or none exact, so no exact key"
    if not isinstance(pk, SUPPORTED_PK_TYPES):
        return "events key rows by integer, char and UUID values only"
    if isinstance(pk, models.CharField) and not (pk.max_length or 0) <= MAX_PK_TEXT:
        return f"its values may be longer than the {MAX_PK_TEXT} characters a version holds"
    return None


def _importable(path: Any) -> bool:
    try:
        import_string(str(path))
    except ImportError:
        return False
    return True


def _did_you_mean(key: Any, known: Iterable[str]) -> str:
    """The hint for an unknown key: the nearest known one (case aside), then all of them."""
    known = list(known)
    by_case = {name.lower(): name for name in known}
    close = difflib.get_close_matches(str(key).lower(), by_case, n=1)
    listed = f"Known options: {', '.join(known)}."
    return f"Did you mean {by_case[close[0]]!r}? {listed}" if close else listed


def _check_keys(where: str, given: Any, known: Iterable[str], check_id: str) -> list[Any]:
    """A settings dict with no key outside ``known``: a misspelt key would otherwise be
    ignored, and its default used without a word."""
    if given is None:
        return []
    if not isinstance(given, dict):
        return [Error(f"{where} must be a dict.", id="django_mirror.E001")]
    known = list(known)
    return [
        Error(f"{where} has unknown option {key!r}.", hint=_did_you_mean(key, known), id=check_id)
        for key in given
        if key not in known
    ]


def _keywords(function: Any) -> tuple[dict[str, inspect.Parameter], bool]:
    """The parameters ``function`` (or a class's constructor) takes by keyword, and
    whether it takes any other keyword too (``**kwargs``)."""
    parameters = inspect.signature(function).parameters.values()
    named = {
        p.name: p
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return named, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _check_stream_options(backend: Any, options: dict[str, Any]) -> list[Any]:
    """``OPTIONS`` become the backend's constructor's keywords: checked against its
    signature here, not met as a ``TypeError`` at the first write. ``KinesisStream``
    hands its ``**client_options`` on to ``AwsClient``, whose signature names those."""
    from django_mirror.core.aws import AwsClient
    from django_mirror.streams import KinesisStream

    where = "DJANGO_MIRROR['STREAM']['OPTIONS']"
    try:
        accepted, open_ended = _keywords(backend)
        if open_ended and isinstance(backend, type) and issubclass(backend, KinesisStream):
            forwarded, open_ended = _keywords(AwsClient)
            accepted |= {name: p for name, p in forwarded.items() if name != "service"}
    except (TypeError, ValueError):  # no signature to read: left to the backend
        return []
    errors = [] if open_ended else _check_keys(where, options, accepted, "django_mirror.E026")
    missing = [name for name, p in accepted.items() if p.default is p.empty and name not in options]
    if missing:
        errors.append(
            Error(
                f"{where} lacks {', '.join(map(repr, missing))}, which "
                f"{getattr(backend, '__qualname__', backend)} requires.",
                id="django_mirror.E026",
            )
        )
    return errors


def _check_stream(raw: Any, stream: dict[str, Any]) -> list[Any]:
    """The stream as written (``raw``) and as merged over the defaults (``stream``)."""
    errors = _check_keys("DJANGO_MIRROR['STREAM']", raw, conf.DEFAULT_STREAM, "django_mirror.E024")
    options = raw.get("OPTIONS") if isinstance(raw, dict) else None
    if options is not None and not isinstance(options, dict):
        return [
            *errors,
            Error("DJANGO_MIRROR['STREAM']['OPTIONS'] must be a dict.", id="django_mirror.E001"),
        ]
    if not _importable(stream.get("BACKEND")):
        errors.append(
            Error(
                f"DJANGO_MIRROR['STREAM']['BACKEND'] {stream.get('BACKEND')!r} cannot be imported.",
                hint="Use 'django_mirror.streams.KinesisStream' or the dotted path of your class.",
                id="django_mirror.E008",
            )
        )
    else:
        errors += _check_stream_options(import_string(stream["BACKEND"]), stream["OPTIONS"])
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
    refused = _pk_refusal(model)
    if refused:
        errors.append(
            Error(
                f"{label} has a primary key of type {type(model._meta.pk).__name__}, which "
                f"cannot be mirrored: {refused}.",
                hint="Supported: integer, char (up to 255 characters) and UUID primary keys "
                "on a single field; see docs/settings.md, 'Primary keys'.",
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
        if not through._meta.auto_created and through not in conf.mirrored_models():
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
    errors = _check_keys("DJANGO_MIRROR", raw, conf.SETTINGS_KEYS, "django_mirror.E023")
    if mirror.source not in settings.DATABASES:
        errors.append(
            Error(
                f"DJANGO_MIRROR['SOURCE'] {mirror.source!r} is not a DATABASES alias.",
                id="django_mirror.E003",
            )
        )
    errors += _check_stream(raw.get("STREAM"), mirror.stream)
    errors += _check_keys(
        "DJANGO_MIRROR['RELAY']", raw.get("RELAY"), conf.DEFAULT_RELAY, "django_mirror.E015"
    )
    errors += _check_keys(
        "DJANGO_MIRROR['REPLAY']", raw.get("REPLAY"), conf.DEFAULT_REPLAY, "django_mirror.E025"
    )
    if mirror.relay["ON_COMMIT"] not in RELAY_MODES:
        errors.append(
            Error(
                f"DJANGO_MIRROR['RELAY']['ON_COMMIT'] is {mirror.relay['ON_COMMIT']!r}.",
                hint=f"Use one of {', '.join(RELAY_MODES)}.",
                id="django_mirror.E015",
            )
        )
    errors += _check_options("SHADOW", raw.get("SHADOW"), SHADOW_OPTIONS, "django_mirror.E016")
    errors += _check_options("PHASES", raw.get("PHASES"), PHASES_OPTIONS, "django_mirror.E017")
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
    name: str, given: Any, known: dict[str, tuple[type, float, float]], check_id: str
) -> list[Any]:
    """A dict of numeric options as written: every key known, every value a number in range."""
    errors = _check_keys(f"DJANGO_MIRROR[{name!r}]", given, known, check_id)
    if not isinstance(given, dict):
        return errors
    for key, value in given.items():
        if key not in known:
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


@register(Tags.models, "django_mirror")
def check_database_on_delete(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """Django 6.1's ``DB_CASCADE``, ``DB_SET_NULL`` and ``DB_SET_DEFAULT`` have the database
    delete or rewrite child rows itself: no collector, no signal, so no event is captured."""
    database_level = getattr(deletion, "DatabaseOnDelete", None)
    if database_level is None:  # Django before 6.1 has none
        return []
    errors = []
    for model in conf.mirrored_models():
        if model._meta.proxy:
            continue
        for field in model._meta.concrete_fields:
            on_delete = getattr(field.remote_field, "on_delete", None)
            if not isinstance(on_delete, database_level):
                continue
            in_python = str(on_delete).removeprefix("DB_")
            errors.append(
                Error(
                    f"{model._meta.label} is mirrored, but {field.name} has "
                    f"on_delete=models.{on_delete}: deleting a "
                    f"{field.related_model._meta.label} makes the database "
                    f"{'delete' if in_python == 'CASCADE' else 'rewrite'} its rows without "
                    "Django, so django-mirror captures no event and the target keeps them "
                    "as they were.",
                    hint=f"Use on_delete=models.{in_python}: Django then does the same, and "
                    "django-mirror captures it.",
                    obj=field,
                    id="django_mirror.E027",
                )
            )
    return errors


#: The Django releases the test suite runs on, ``[lowest, past the highest)``: the range
#: pyproject.toml declares (tests/test_packaging.py keeps the two equal).
TESTED_DJANGO = ((5, 2), (7, 0))


#: A value of each column type as a database driver hands it over: passed through a
#: field's ``from_db_value()``, it is what a loaded instance of the model holds.
_DRIVER_SAMPLES: dict[str, Any] = {
    **dict.fromkeys(("CharField", "TextField", "SlugField", "EmailField"), "x"),
    **dict.fromkeys(
        (
            "IntegerField",
            "BigIntegerField",
            "SmallIntegerField",
            "PositiveIntegerField",
            "PositiveBigIntegerField",
            "PositiveSmallIntegerField",
        ),
        1,
    ),
    "FloatField": 1.5,
    "DecimalField": Decimal("1.5"),
    "BooleanField": True,
    "DateField": dt.date(2000, 1, 2),
    "DateTimeField": dt.datetime(2000, 1, 2, 3, 4, 5),
    "TimeField": dt.time(3, 4, 5),
    "DurationField": dt.timedelta(seconds=1),
    "UUIDField": uuid.UUID(int=1),
    "BinaryField": b"x",
}


def _sample_values(field: models.Field) -> list[Any]:
    """Values the field's instances hold: its default (unless a callable makes it), and
    what it makes of a value the driver hands over (its ``from_db_value()``, where it
    has one). A sample the field cannot make is left out: not ours to judge it by."""
    makers = []
    if field.has_default() and not callable(field.default):
        # A callable default is never called here: it may write (get_or_create()).
        makers.append(field.get_default)
    raw = _DRIVER_SAMPLES.get(field.get_internal_type())
    converter = getattr(field, "from_db_value", None)
    if raw is not None and converter is not None:
        connection = connections[conf.source_alias()]
        makers.append(lambda: converter(raw, None, connection))
    values = []
    for make in makers:
        try:
            values.append(make())
        except Exception:
            continue
    return [value for value in values if value is not None]


@register(Tags.models, "django_mirror")
def check_field_values(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """A field whose values capture cannot carry would refuse every write of its model:
    found here, by its default and by what it makes of a value read from the database,
    rather than at the first ``save()``."""
    errors = []
    for model in conf.mirrored_models():
        config = conf.model_config(model)
        excluded = set(config.exclude_fields if config else ())
        for field in model._meta.concrete_fields:
            if {field.name, field.attname} & excluded:
                continue
            try:
                for value in _sample_values(field):
                    encode_column(field, value)
            except Exception as exc:
                if not isinstance(exc, TypeError):  # the field's own failure, not ours
                    continue
                errors.append(
                    Error(
                        f"{model._meta.label}.{field.name} is mirrored, but its values cannot "
                        f"be carried in an event ({exc}): every write of the model would fail.",
                        hint=f"Add {field.name!r} to the model's exclude_fields, or give "
                        f"{type(field).__name__} a value_to_string() that to_python() reads "
                        "back (as Django's serializers need).",
                        obj=field,
                        id="django_mirror.E028",
                    )
                )
    return errors


@register(Tags.models, "django_mirror")
def check_group_phases(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """Settings that start a group's models in different phases split it from the first
    write: a cascade would run on one primary and miss rows on the other."""
    from django_mirror.config import graph

    configs = {c.label.lower(): c for c in conf.mirrored_models().values()}  # as set
    messages = []
    for group in graph.groups():
        configured = {
            label: config.phase
            for label in group.members
            if (config := configs.get(label.lower())) is not None
        }
        if len(set(configured.values())) > 1:
            phases = ", ".join(f"{label}: {phase}" for label, phase in configured.items())
            messages.append(
                Warning(
                    f"DJANGO_MIRROR['MODELS'] starts one group in different phases ({phases}).",
                    hint="Models tied by foreign keys whose on_delete writes the other "
                    "table move together: give them one phase (see docs/runbook.md, Groups).",
                    id="django_mirror.W008",
                )
            )
    return messages


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


def log_errors_at_first_lookup() -> None:
    """Django runs system checks in ``manage.py`` commands only, never in a WSGI or ASGI
    server: there, the first write of a process logs each settings error at ERROR, so a
    bad setting shows at once, not as events that never ship."""
    try:
        silenced = set(getattr(settings, "SILENCED_SYSTEM_CHECKS", ()))
        for message in [*check_settings(), *check_database_on_delete()]:
            if message.is_serious() and message.id not in silenced:
                logger.error("django-mirror is misconfigured: %s", message)
    except Exception:  # a check that fails must not fail the write that ran it
        logger.warning("django-mirror: its settings could not be checked", exc_info=True)


conf.first_lookup_hooks.append(log_errors_at_first_lookup)
