"""Typed, lazily read view of the ``DJANGO_MIRROR`` setting.

Everything else in the app asks this module, never ``settings`` directly, so a
single cache (cleared on ``setting_changed``) keeps ``override_settings`` working
and the hot capture path down to one dict lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.signals import setting_changed
from django.db import models

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
)

DEFAULT_STREAM: dict[str, Any] = {
    "BACKEND": "django_mirror.streams.KinesisStream",
    "OPTIONS": {"stream_name": "mirror-ops", "region_name": "us-east-1", "endpoint_url": None},
}
DEFAULT_SHADOW: dict[str, Any] = {
    "RECHECK_DELAY": 5.0,
    "TIMEOUT": 2.0,
    "POOL_SIZE": 4,
    "QUEUE_SIZE": 1000,
    # Share of sampled reads compared source against source instead, for the noise floor.
    "CONTROL_RATE": 0.0,
    # Seconds between writes of the dashboard's per-minute figures to the database.
    "STATS_INTERVAL": 10.0,
}
DEFAULT_RELAY: dict[str, Any] = {
    # "thread": ship from a background thread right after commit; "sync": ship in
    # the committing thread; "off": leave it all to ``mirror_relay``.
    "ON_COMMIT": "thread",
    "BATCH_SIZE": 500,
    # Seconds a relay holds the batches it claimed before another relay may take them.
    "LEASE_SECONDS": 60.0,
}
DEFAULT_REPLAY: dict[str, Any] = {
    "BATCH_SIZE": 1000,
    "LEASE_SECONDS": 30.0,
    "IDLE_SLEEP": 1.0,
    # Seconds between looks for failed live writes that replay has since applied.
    "HEAL_INTERVAL": 10.0,
}
DEFAULT_PHASES: dict[str, Any] = {
    # Seconds between reads of the MirrorState overrides in each process.
    "REFRESH": 2.0,
    # Moving to "mirror" asks for replay lag under this many seconds ...
    "MAX_REPLAY_LAG": 10.0,
    # ... and a clean mirror_verify of the model finished within this many seconds.
    "VERIFY_WITHIN": 24 * 3600.0,
    # Moving to "promoted" asks for no confirmed mismatch for this many seconds.
    "CLEAN_FOR": 3600.0,
    # Generated keys on the new primary store start this far past the highest key held
    # anywhere: room for the old store's inserts while processes learn of the switch.
    "KEY_GAP": 100_000,
}
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
    source: str
    stream: dict[str, Any]
    shadow: dict[str, Any]
    relay: dict[str, Any]
    replay: dict[str, Any]
    phases: dict[str, Any]
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Interface path -> {"source", "targets", "phase", "shadow_read_rate"} (raw).
    repositories: dict[str, Any] = field(default_factory=dict)


def _merged(default: dict[str, Any], override: Any) -> dict[str, Any]:
    """``override`` over ``default``; an override that is not a dict is left to the checks
    (E001), so reading the setting never crashes before they run."""
    return {**default, **(override if isinstance(override, dict) else {})}


@cache
def get_settings() -> MirrorSettings:
    """The whole setting merged over defaults (raw per-model dicts, unvalidated)."""
    raw: dict[str, Any] = getattr(settings, "DJANGO_MIRROR", None) or {}
    if not isinstance(raw, dict):  # check E001 reports it; do not crash before checks run
        raw = {}
    raw_models = raw.get("MODELS") if isinstance(raw.get("MODELS"), dict) else {}
    stream = _merged(DEFAULT_STREAM, raw.get("STREAM"))
    stream["OPTIONS"] = _merged(DEFAULT_STREAM["OPTIONS"], stream["OPTIONS"])
    return MirrorSettings(
        source=raw.get("SOURCE", "default"),
        stream=stream,
        shadow=_merged(DEFAULT_SHADOW, raw.get("SHADOW")),
        relay=_merged(DEFAULT_RELAY, raw.get("RELAY")),
        replay=_merged(DEFAULT_REPLAY, raw.get("REPLAY")),
        phases=_merged(DEFAULT_PHASES, raw.get("PHASES")),
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
            through = m2m.remote_field.through
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


def clear_cache() -> None:
    get_settings.cache_clear()
    mirrored_models.cache_clear()
    _configs_by_label.cache_clear()
    _effective.clear()


#: Settings whose change rebuilds what is built from them. This module's receiver runs
#: first (it is connected first); capture, streams and targets each connect their own.
RECONFIGURING = frozenset({"DJANGO_MIRROR", "DATABASES", "INSTALLED_APPS"})


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in RECONFIGURING:
        clear_cache()


setting_changed.connect(_on_setting_changed, dispatch_uid="django_mirror.conf")
