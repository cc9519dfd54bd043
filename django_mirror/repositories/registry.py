"""``DJANGO_MIRROR["REPOSITORIES"]``: each interface's source and target implementations
and phase, read lazily like the models' settings (the cache clears with them)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from django_mirror.config import conf
from django_mirror.repositories.interface import InterfaceSpec, spec_of

PHASES = ("off", "capture", "mirror")


@dataclass
class RepositoryConfig:
    name: str
    interface: type
    spec: InterfaceSpec
    source_path: str
    target_paths: dict[str, str]
    phase: str = "capture"
    shadow_read_rate: float = 0.0
    _instances: dict[str, Any] = field(default_factory=dict, repr=False)

    def _instance(self, key: str, path: str) -> Any:
        if key not in self._instances:
            self._instances[key] = import_string(path)()
        return self._instances[key]

    def source(self) -> Any:
        return self._instance("", self.source_path)

    def targets(self) -> dict[str, Any]:
        """Each target implementation by its name, made once per process."""
        return {
            name: self._instance(f"target:{name}", path) for name, path in self.target_paths.items()
        }

    @property
    def recording(self) -> bool:
        return self.phase in ("capture", "mirror")

    def mirrored(self) -> Any:
        """The interface's generated wrapper around the configured source."""
        return self.interface.Mirrored(self.source(), name=self.name)  # type: ignore[attr-defined]


@functools.cache
def configs() -> dict[str, RepositoryConfig]:
    """Every configured interface (by the name its calls carry); entries that do not
    import are left to the system checks."""
    found: dict[str, RepositoryConfig] = {}
    for path, options in conf.get_settings().repositories.items():
        if not isinstance(options, dict):
            continue
        try:
            interface = import_string(path)
            spec = spec_of(interface)
        except (ImportError, TypeError):
            continue
        found[spec.name] = RepositoryConfig(
            name=spec.name,
            interface=interface,
            spec=spec,
            source_path=str(options.get("source", "")),
            target_paths=dict(options.get("targets") or {}),
            phase=str(options.get("phase", "capture")),
            shadow_read_rate=float(options.get("shadow_read_rate", 0.0) or 0.0),
        )
    return found


def config_for(name: str) -> RepositoryConfig | None:
    return configs().get(name)


def get(interface: type | str) -> Any:
    """The mirrored repository for an interface (class or dotted path), as settings say."""
    name = interface if isinstance(interface, str) else spec_of(interface).name
    config = config_for(name)
    if config is None:
        path = (
            name
            if isinstance(interface, str)
            else f"{interface.__module__}.{interface.__qualname__}"
        )
        config = next(
            (
                c
                for c in configs().values()
                if f"{c.interface.__module__}.{c.interface.__qualname__}" == path
            ),
            None,
        )
    if config is None:
        raise LookupError(f"{name} is not in DJANGO_MIRROR['REPOSITORIES']")
    return config.mirrored()


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "DJANGO_MIRROR":
        configs.cache_clear()  # the wrappers' bypasses come off next (wrapper.py)


setting_changed.connect(_on_setting_changed, dispatch_uid="django_mirror.repositories")
