"""The wrapper ``@repository`` generates: one class per interface, one method per
interface method, built from the signatures (no code written per method).

- **write**: runs on the source. In phase ``capture`` and ``mirror`` the call and its
  outcome (a result, or a tolerated error) are recorded as a call event; in ``mirror``
  the call then runs on every target, each outcome compared with the source's. An error
  the interface does not tolerate goes to the caller and is neither recorded nor
  mirrored.
- **read**: answered by the source; in ``mirror`` a sampled share also runs on each
  target, on the shadow-read pool, compared after the method's ``preprocess``.
- **passthrough**: the source's method, untouched.

Whatever a target does, the caller gets the source's result or error. While an
interface is ``off`` (or not configured), a wrapper's first call sets the source's own
bound methods on the instance, so later calls cost what calling the source costs; a
change to ``DJANGO_MIRROR`` takes them off again. For that, the generated class keeps
its methods out of its namespace (see ``_MirroredClass``).
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
import types
import weakref
from typing import Any

from django.core.signals import setting_changed

from django_mirror.observability import reporting
from django_mirror.repositories import calls
from django_mirror.repositories.interface import (
    PASSTHROUGH,
    READ,
    BoundCall,
    C,
    InterfaceError,
    InterfaceSpec,
    MethodSpec,
    method_spec,
)
from django_mirror.repositories.registry import config_for


def _config(wrapper: Any) -> Any:
    return config_for(wrapper._mirror_name)


def _timed(implementation: Any, method: MethodSpec, args: Any, kwargs: Any) -> tuple[dict, float]:
    started = time.perf_counter()
    result = calls.run(implementation, method, list(args), dict(kwargs))
    return result, (time.perf_counter() - started) * 1000


def _mirror_write(config: Any, method: MethodSpec, bound: BoundCall, expected: dict) -> list[str]:
    """Run a write on every target after the source; differences are write mismatches.
    Returns the targets that ran it, which replay then leaves out."""
    from django_mirror.core.request import current_path

    args, kwargs = bound.args, bound.kwargs
    ran: list[str] = []
    for name, target in config.targets().items():
        with reporting.guarded(f"mirroring {config.name}.{method.name} to {name} failed"):
            got, elapsed = _timed(target, method, args, kwargs)
            ran.append(name)
            reporting.timing(f"repository.latency.{name}", elapsed, config.name)
            if calls.comparable(method, got) != calls.comparable(method, expected):
                key = str(calls.partition(method, bound))
                calls.mismatch(
                    config.name, name, method, key, expected, got, "write", current_path()
                )
            else:
                reporting.incr("write.applied", 1, config.name)
    return ran


def _shadow_read(config: Any, method: MethodSpec, bound: BoundCall, expected: dict) -> None:
    """Queue the read for each target on the shadow pool (skipped and counted when full)."""
    from django_mirror.core.request import current_path
    from django_mirror.shadow import get_pool

    path = current_path()
    args, kwargs = bound.args, bound.kwargs
    for name, target in config.targets().items():

        def compare(name: str = name, target: Any = target) -> None:
            with reporting.guarded(f"shadow read of {config.name}.{method.name} failed"):
                got, elapsed = _timed(target, method, args, kwargs)
                reporting.read_latency("target", elapsed, config.name)
                reporting.incr("read.compared", 1, config.name)
                if calls.comparable(method, got) == calls.comparable(method, expected):
                    reporting.incr("read.match", 1, config.name)
                    return
                key = str(calls.partition(method, bound)) if method.partition_key else "-"
                calls.mismatch(config.name, name, method, key, expected, got, "read", path)

        if not get_pool().submit(compare):
            reporting.incr("read.skipped", 1, config.name)


#: Striped locks: writes of one partition key in one process run on the source and are
#: recorded in the same order. (Across processes the source's own transaction must order
#: them: make the write and its record one transaction; see docs/repositories.md.)
_ORDER = [threading.Lock() for _ in range(256)]


#: Wrappers bypassed while their interface is off, and the settings generation a bypass
#: must have been decided in: one decided on settings read before a change must not stick.
_bypassed: weakref.WeakSet[Any] = weakref.WeakSet()
_bypass_lock = threading.Lock()
_generation = 0


def _bypass(wrapper: Any, generation: int) -> None:
    """Set the source's bound methods on the wrapper: its calls then skip the wrapper."""
    with _bypass_lock:
        if generation != _generation:
            return
        source = wrapper._mirror_source
        for name in wrapper._mirror_spec.methods:
            method = getattr(source, name, None)
            if callable(method):  # otherwise the wrapper's method raises, as it did
                wrapper.__dict__[name] = method
        _bypassed.add(wrapper)


def settings_changed(*, setting: str = "DJANGO_MIRROR", **kwargs: Any) -> None:
    """Take every bypass off: each wrapper reads its interface's settings on its next call.
    Connected after the registry's receiver, so it runs once the configs are cleared."""
    if setting != "DJANGO_MIRROR":
        return
    global _generation
    with _bypass_lock:
        _generation += 1
        for wrapper in list(_bypassed):
            for name in wrapper._mirror_spec.methods:
                wrapper.__dict__.pop(name, None)
        _bypassed.clear()


def _sampled(config: Any) -> bool:
    from django_mirror.shadow.scope import current

    scope = current()
    if scope is None:
        return False
    rate = config.shadow_read_rate if scope.rate is None else scope.rate
    return scope.draw < rate


def _method(spec: InterfaceSpec, method: MethodSpec) -> Any:
    name = method.name

    if method.kind == PASSTHROUGH:

        def passthrough(self: Any, *args: Any, **kwargs: Any) -> Any:
            return getattr(self._mirror_source, name)(*args, **kwargs)

        return passthrough

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        generation = _generation
        config = _config(self)
        source = getattr(self._mirror_source, name)
        if config is None or config.phase == "off":
            _bypass(self, generation)
            return source(*args, **kwargs)
        if method.kind == READ or method.partition_key is None:
            return _run(config, source, args, kwargs, None)
        try:  # bound once: it orders the call, then records it
            bound = calls.bound_call(method, args, kwargs)
            key = calls.partition(method, bound)
        except TypeError:  # a call the signature refuses: let the source say so
            return _run(config, source, args, kwargs, None)
        with _ORDER[hash(str(key)) % len(_ORDER)]:
            return _run(config, source, args, kwargs, bound)

    def _run(
        config: Any,
        source: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        bound: BoundCall | None,
    ) -> Any:
        started = time.perf_counter()
        try:
            result = source(*args, **kwargs)
        except method.tolerate as exc:  # an outcome: recorded and mirrored, then raised
            error: BaseException | None = exc
            result = None
        else:
            error = None
        elapsed = (time.perf_counter() - started) * 1000
        if method.kind == READ:
            with reporting.guarded(f"shadowing {spec.name}.{name} failed"):
                if config.phase == "mirror" and _sampled(config):
                    bound = bound or calls.bound_call(method, args, kwargs)
                    reporting.read_latency("source", elapsed, config.name)
                    _shadow_read(config, method, bound, calls.outcome(result, error))
        else:
            # Recorded in the caller's transaction, as row capture is: a call that cannot
            # be recorded fails (and rolls back with the write, when they share one).
            bound = bound or calls.bound_call(method, args, kwargs)
            expected = calls.outcome(result, error)
            live: list[str] = []
            if config.phase == "mirror":
                with reporting.guarded(f"mirroring {spec.name}.{name} failed"):
                    reporting.timing("repository.latency.source", elapsed, config.name)
                    live = _mirror_write(config, method, bound, expected)
            calls.record(spec, method, bound, expected, live=live)
        if error is not None:
            raise error
        return result

    return call


class _MirroredClass(type):
    """The generated classes' type: a wrapper's methods are served by ``__getattr__``,
    never stored in the class, and this gives them back as class attributes
    (``Interface.Mirrored.follow``) for introspection.

    Why: CPython (3.11+) specialises an attribute lookup only when no class attribute
    has the name. A bypass is an instance attribute; with the wrapper's method also in
    the class, every bypassed call took the generic lookup, about 15 ns more than the
    source's own call (1.45x on a no-op method). With the class free of the name, it is
    one specialised instance-attribute lookup.
    """

    _mirror_methods: dict[str, Any]

    def __getattr__(cls, name: str) -> Any:
        try:
            return cls._mirror_methods[name]
        except KeyError:
            raise AttributeError(
                f"type object {cls.__name__!r} has no attribute {name!r}"
            ) from None

    def __dir__(cls) -> list[str]:
        return sorted({*super().__dir__(), *cls._mirror_methods})


def wrapper_class(interface: type, spec: InterfaceSpec) -> type:
    """The generated class: ``Interface.Mirrored(source_implementation)``."""
    methods = {
        method.name: functools.wraps(getattr(interface, method.name))(_method(spec, method))
        for method in spec.methods.values()
    }

    def __init__(self: Any, source: Any, name: str | None = None) -> None:
        self._mirror_source = source
        self._mirror_name = name or spec.name

    def __getattr__(self: Any, name: str) -> Any:
        """The wrapper's own method, bound, while no bypass is set on the instance."""
        try:
            function = methods[name]
        except KeyError:
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute {name!r}"
            ) from None
        return types.MethodType(function, self)

    def __dir__(self: Any) -> list[str]:
        return sorted({*object.__dir__(self), *methods})

    namespace: dict[str, Any] = {
        "__init__": __init__,
        "__getattr__": __getattr__,
        "__dir__": __dir__,
        "__doc__": f"Mirrored {spec.name}.",
        "_mirror_spec": spec,
        "_mirror_methods": methods,
    }
    return _MirroredClass(f"Mirrored{interface.__name__}", (), namespace)


def repository(cls: C | None = None, *, name: str | None = None) -> Any:
    """Tag an interface; every public method must say what it is (``@write``, ``@read``
    or ``@passthrough``), and every argument of a write or read must be serialisable.
    ``name`` (default: the dotted path) names its calls in events and settings."""

    def build(interface: C) -> C:
        spec = InterfaceSpec(name or f"{interface.__module__}.{interface.__qualname__}")
        for attr, value in inspect.getmembers(interface, inspect.isfunction):
            if attr.startswith("_"):
                continue
            if not hasattr(value, "__mirror_method__"):
                raise InterfaceError(
                    f"{interface.__qualname__}.{attr}: mark it @write, @read or @passthrough"
                )
            spec.methods[attr] = method_spec(interface, attr, value)
        interface.__mirror_interface__ = spec  # type: ignore[attr-defined]
        interface.Mirrored = wrapper_class(interface, spec)  # type: ignore[attr-defined]
        return interface

    return build(cls) if cls is not None else build


# After the registry's receiver (imported above): a bypass must not see old configs.
setting_changed.connect(settings_changed, dispatch_uid="django_mirror.repositories.wrapper")
