"""Typed, lazily read view of the ``DJANGO_MIRROR`` setting.

Everything else in the app asks this module, never ``settings`` directly, so a
single cache (cleared on ``setting_changed``) keeps ``override_settings`` working
and the hot capture path down to one dict lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from functools import cache
from typing import Any, TypeVar

from django.apps import apps
from django.conf import settings
from django.core.signals import setting_changed
from django.db import connections, models

PHASES = ("off", "capture", "mirror", "promoted")
CAPTURING_PHASES = frozenset({"capture", "mirror", "promoted"})
#: Phases in which reads are shadowed on the other store.
SHADOWING_PHASES = frozenset({"mirror", "promoted"})

#: Every key ``DJANGO_MIRROR`` itself may have; check E023 reports any other.
SETTINGS_KEYS = (
    "SOURCE",
    "STREAM",
    "MODELS",
    "RELAY",
    "REPLAY",
    "SHADOW",
    "PHASES",
    "REPOSITORIES",
    "CAPTURE",
    "WAL",
)

#: Where capture hears of writes: "orm" (the ORM's write paths, the default) or "wal"
#: (PostgreSQL's write-ahead log, read by ``mirror_capture``; every writer is seen).
CAPTURE_MODES = ("orm", "wal")

#: The stream's constructor arguments unless ``STREAM["OPTIONS"]`` says otherwise.
_STREAM_OPTIONS: dict[str, Any] = {
    "stream_name": "mirror-ops",
    "region_name": "us-east-1",
    "endpoint_url": None,
}


@dataclass(frozen=True)
class StreamSettings:
    """``DJANGO_MIRROR["STREAM"]``: where captured events travel between source and replay."""

    #: Dotted path of the ``Stream`` class, as written (check E008 reports one that
    #: does not import).
    backend: str = "django_mirror.streams.KinesisStream"
    #: Keyword arguments of the backend's constructor, the user's over these defaults.
    options: dict[str, Any] = field(default_factory=lambda: dict(_STREAM_OPTIONS))


@dataclass(frozen=True)
class ShadowSettings:
    """``DJANGO_MIRROR["SHADOW"]``: shadow reads, and the dashboard's figures."""

    #: Seconds to wait before a read whose answers differed is compared again.
    recheck_delay: float = 5.0
    #: Seconds a comparison may wait in the pool's queue, and its target query may take.
    timeout: float = 2.0
    #: Worker threads per process that run shadow reads on the other store.
    pool_size: int = 4
    #: Comparisons that may wait for a worker; a sampled read past it is not compared.
    queue_size: int = 1000
    #: Share (0.0-1.0) of sampled reads compared source against source instead, for the
    #: noise floor.
    control_rate: float = 0.0
    #: Seconds between writes of the dashboard's per-minute figures to the database.
    stats_interval: float = 10.0


@dataclass(frozen=True)
class RelaySettings:
    """``DJANGO_MIRROR["RELAY"]``: how captured events leave the outbox."""

    #: What follows a commit that captured events: "thread" ships them from a background
    #: thread, "sync" in the committing thread, "off" leaves it all to ``mirror_relay``
    #: (as written: check E015 reports any other value).
    on_commit: str = "thread"
    #: Outbox rows one relay round claims and ships.
    batch_size: int = 500
    #: Seconds a relay holds the rows it claimed before another relay may take them.
    lease_seconds: float = 60.0
    #: Seconds the after-commit thread waits after a commit before it ships, so the
    #: commits of that time go in one round (one claim, one put, one delete).
    linger: float = 0.05


@dataclass(frozen=True)
class ReplaySettings:
    """``DJANGO_MIRROR["REPLAY"]``: how ``mirror_replay`` reads the stream."""

    #: Records read from a shard at once and applied in one target transaction.
    batch_size: int = 1000
    #: Seconds a replay process holds a shard's lease without renewing it.
    lease_seconds: float = 30.0
    #: Seconds of pause between rounds that read no records.
    idle_sleep: float = 1.0
    #: Seconds between looks for failed live writes that replay has since applied.
    heal_interval: float = 10.0


@dataclass(frozen=True)
class WalSettings:
    """``DJANGO_MIRROR["WAL"]``: limits for ``CAPTURE = "wal"``."""

    #: Bytes of WAL the slot may retain before W010 and ``mirror_status`` warn: a slot
    #: nobody reads keeps every later log segment on the source's disk.
    max_retained_bytes: int = 1024**3


@dataclass(frozen=True)
class PhasesSettings:
    """``DJANGO_MIRROR["PHASES"]``: run-time phase changes and what they ask for."""

    #: Seconds between reads of the ``MirrorState`` overrides in each process.
    refresh: float = 2.0
    #: Moving to "mirror" asks for replay lag under this many seconds ...
    max_replay_lag: float = 10.0
    #: ... and a clean ``mirror_verify`` of the model finished within this many seconds.
    verify_within: float = 24 * 3600.0
    #: Moving to "promoted" asks for no confirmed mismatch for this many seconds.
    clean_for: float = 3600.0
    #: Keys generated on the new primary store start this many past the highest key held
    #: anywhere: room for the old store's inserts while processes learn of the switch.
    key_gap: int = 100_000


def section_keys(section: type[Any]) -> tuple[str, ...]:
    """The keys a section of the setting may have: its dataclass's fields, upper-cased."""
    return tuple(f.name.upper() for f in fields(section))


DEFAULT_MODEL: dict[str, Any] = {
    "target": None,
    "phase": "capture",
    "shadow_read_rate": 0.0,
    "exclude_fields": [],
    "redact_fields": [],
    "compare": None,
}


@dataclass(frozen=True)
class ModelConfig:
    """How one model is mirrored; ``owner`` is set for implicit M2M through tables."""

    label: str
    model: type[models.Model] | None
    target: str | dict[str, Any] | None
    phase: str
    shadow_read_rate: float
    exclude_fields: tuple[str, ...]
    redact_fields: tuple[str, ...]
    compare: str | None
    owner: str | None = None
    #: Phase changes made at run time (``MirrorState``); the high part of versions.
    generation: int = 0

    @property
    def capturing(self) -> bool:
        return self.phase in CAPTURING_PHASES

    @property
    def live(self) -> bool:
        """Committed writes are applied to the other store at once (``mirror``, and
        ``promoted`` in the other direction)."""
        return self.phase in SHADOWING_PHASES

    @property
    def promoted(self) -> bool:
        return self.phase == "promoted"

    @property
    def shadowing(self) -> bool:
        return self.phase in SHADOWING_PHASES and self.shadow_read_rate > 0

    @property
    def primary_alias(self) -> str:
        """The alias that holds the truth now, whose writes are captured: the target once
        the model is promoted, the source before."""
        if self.promoted and self.target_alias:
            return self.target_alias
        return source_alias()

    @property
    def other_alias(self) -> str | None:
        """The alias that follows the primary one (None for a non-database target)."""
        if self.promoted and self.target_alias:
            return source_alias()
        return self.target_alias

    @property
    def target_alias(self) -> str | None:
        """The ``DATABASES`` alias rows are replayed into, when the target is one."""
        return self.target if isinstance(self.target, str) else None


@dataclass(frozen=True)
class MirrorSettings:
    """The whole ``DJANGO_MIRROR`` setting, each section merged over its defaults."""

    #: The ``DATABASES`` alias that holds the truth today.
    source: str = "default"
    #: ``CAPTURE`` as written: "orm" or "wal" (checks E029-E031 and W009).
    capture: str = CAPTURE_MODES[0]
    stream: StreamSettings = field(default_factory=StreamSettings)
    shadow: ShadowSettings = field(default_factory=ShadowSettings)
    relay: RelaySettings = field(default_factory=RelaySettings)
    replay: ReplaySettings = field(default_factory=ReplaySettings)
    phases: PhasesSettings = field(default_factory=PhasesSettings)
    wal: WalSettings = field(default_factory=WalSettings)
    #: Model label -> its options as written (a dict, or what E001 reports).
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Interface path -> {"source", "targets", "phase", "shadow_read_rate"} (raw).
    repositories: dict[str, Any] = field(default_factory=dict)


def _merged(default: dict[str, Any], override: Any) -> dict[str, Any]:
    """``override`` over ``default``; an override that is not a dict is left to the checks
    (E001), so reading the setting never crashes before they run."""
    return {**default, **(override if isinstance(override, dict) else {})}


_Section = TypeVar(
    "_Section", ShadowSettings, RelaySettings, ReplaySettings, PhasesSettings, WalSettings
)


def _section(section: type[_Section], given: Any) -> _Section:
    """``given``, one section as written, over ``section``'s defaults. A number is
    converted to its field's type as its callers always did (``float()``, ``int()``);
    one that cannot be keeps the default, so reading never raises (checks E015, E016,
    E017 and E025 report the bad value); text is kept as written."""
    given = given if isinstance(given, dict) else {}  # else E001
    values: dict[str, Any] = {}
    for option in fields(section):
        key = option.name.upper()
        if key not in given:
            continue
        kind = type(option.default)
        if kind not in (int, float):
            values[option.name] = given[key]
            continue
        try:
            values[option.name] = kind(given[key])
        except (TypeError, ValueError, OverflowError):
            continue
    return section(**values)


@cache
def get_settings() -> MirrorSettings:
    """The whole setting merged over defaults (raw per-model dicts, unvalidated)."""
    raw: dict[str, Any] = getattr(settings, "DJANGO_MIRROR", None) or {}
    if not isinstance(raw, dict):  # check E001 reports it; do not crash before checks run
        raw = {}
    models_setting = raw.get("MODELS")
    raw_models = models_setting if isinstance(models_setting, dict) else {}  # E001
    stream: dict[str, Any] = raw["STREAM"] if isinstance(raw.get("STREAM"), dict) else {}  # E001
    return MirrorSettings(
        source=raw.get("SOURCE", MirrorSettings.source),
        capture=raw.get("CAPTURE", MirrorSettings.capture),
        stream=StreamSettings(
            backend=stream.get("BACKEND", StreamSettings.backend),
            options=_merged(_STREAM_OPTIONS, stream.get("OPTIONS")),
        ),
        shadow=_section(ShadowSettings, raw.get("SHADOW")),
        relay=_section(RelaySettings, raw.get("RELAY")),
        replay=_section(ReplaySettings, raw.get("REPLAY")),
        phases=_section(PhasesSettings, raw.get("PHASES")),
        wal=_section(WalSettings, raw.get("WAL")),
        repositories=dict(raw.get("REPOSITORIES") or {})
        if isinstance(raw.get("REPOSITORIES") or {}, dict)
        else {},
        models={
            label: dict(opts or {}) if isinstance(opts or {}, dict) else opts
            for label, opts in raw_models.items()
        },
    )


def _config(label: str, model: type[models.Model] | None, opts: dict[str, Any]) -> ModelConfig:
    merged = _merged(DEFAULT_MODEL, opts)
    rate = merged["shadow_read_rate"]
    return ModelConfig(
        label=label,
        model=model,
        target=merged["target"],
        phase=merged["phase"],
        shadow_read_rate=float(rate) if isinstance(rate, int | float) else 0.0,  # else E007
        exclude_fields=tuple(merged["exclude_fields"] or ()),
        redact_fields=tuple(merged["redact_fields"] or ()),
        compare=merged["compare"],
    )


@cache
def mirrored_models() -> dict[type[models.Model], ModelConfig]:
    """Every mirrored model class, including the auto-created M2M tables of mirrored models.

    Labels that do not resolve are skipped here; the system checks report them.
    """
    result: dict[type[models.Model], ModelConfig] = {}
    for label, opts in get_settings().models.items():
        if not isinstance(opts, dict):  # check E001 reports it
            continue
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError):
            continue
        config = _config(model._meta.label, model, opts)
        result[model] = config
        for m2m in model._meta.local_many_to_many:
            through: type[models.Model] | str = m2m.remote_field.through  # str: not resolved
            if isinstance(through, type) and through._meta.auto_created and through not in result:
                result[through] = ModelConfig(
                    label=through._meta.label,
                    model=through,
                    target=config.target,
                    phase=config.phase,
                    shadow_read_rate=0.0,
                    exclude_fields=(),
                    redact_fields=(),
                    compare=None,
                    owner=config.label,
                )
    for model in apps.get_models():
        if model._meta.proxy and model._meta.concrete_model in result:
            result[model] = result[model._meta.concrete_model]
    return result


#: Run-time phases, ``{lower-cased label: (phase, generation)}``, kept current by
#: ``django_mirror.phases.transitions`` (a watcher thread); empty until it first reads them.
overrides: dict[str, tuple[str, int]] = {}
_effective: dict[tuple[int, str, int], ModelConfig] = {}
#: Called once, on the first phase lookup of the process (``phases`` adds the one that
#: waits a moment for the first read of the overrides).
first_lookup_hooks: list[Callable[[], None]] = []
_looked_up = False


def _current(config: ModelConfig | None) -> ModelConfig | None:
    """``config`` with its run-time phase; an auto M2M table follows its owner's."""
    global _looked_up
    if not _looked_up:
        _looked_up = True
        for hook in first_lookup_hooks:
            hook()
    if config is None or not overrides:
        return config
    override = overrides.get((config.owner or config.label).lower())
    if override is None or override == (config.phase, config.generation):
        return config
    key = (id(config), *override)
    current = _effective.get(key)
    if current is None:
        current = replace(config, phase=override[0], generation=override[1])
        _effective[key] = current
    return current


def model_config(model: type[models.Model]) -> ModelConfig | None:
    """The config of a mirrored model, or None: the one lookup on every ORM write."""
    return _current(mirrored_models().get(model))


def config_for_label(label: str) -> ModelConfig | None:
    """Look a model up by ``app_label.ModelName`` (case-insensitive), as events name it."""
    return _current(_configs_by_label().get(label.lower()))


def configs() -> list[ModelConfig]:
    """Every mirrored model's config in its current phase (proxies left out)."""
    seen: dict[str, ModelConfig] = {}
    for config in mirrored_models().values():
        seen.setdefault(config.label, config)
    return [c for c in map(_current, seen.values()) if c is not None]


def database_aliases() -> set[str]:
    """The source and every ``DATABASES`` target: where outboxes and versions may live."""
    aliases = {source_alias()}
    aliases |= {c.target_alias for c in mirrored_models().values() if c.target_alias}
    return aliases


@cache
def _configs_by_label() -> dict[str, ModelConfig]:
    return {config.label.lower(): config for config in mirrored_models().values()}


def source_alias() -> str:
    return get_settings().source


def capture_mode() -> str:
    """``CAPTURE``: "wal" when the source's log is read by ``mirror_capture``, so the
    ORM's write paths capture nothing; "orm" otherwise (also for a value the checks
    refuse, so a typo never silences capture)."""
    return "wal" if get_settings().capture == "wal" else "orm"


@cache
def log_captured_aliases() -> frozenset[str]:
    """The aliases ``mirror_capture`` reads the log of, whose writes the ORM therefore does
    not capture: with ``CAPTURE = "wal"``, the source and every PostgreSQL database target
    (where a promoted model is written); none with ORM capture. Read on every write, so
    kept until the settings change."""
    if capture_mode() != "wal":
        return frozenset()
    return frozenset(
        alias
        for alias in database_aliases()
        if alias in connections and connections[alias].vendor == "postgresql"
    )


def clear_cache() -> None:
    get_settings.cache_clear()
    mirrored_models.cache_clear()
    _configs_by_label.cache_clear()
    log_captured_aliases.cache_clear()
    _effective.clear()


#: Settings whose change rebuilds what is built from them. This module's receiver runs
#: first (it is connected first); capture, streams and targets each connect their own.
RECONFIGURING = frozenset({"DJANGO_MIRROR", "DATABASES", "INSTALLED_APPS"})


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in RECONFIGURING:
        clear_cache()


setting_changed.connect(_on_setting_changed, dispatch_uid="django_mirror.conf")
