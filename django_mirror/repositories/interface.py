"""Declaring a repository interface: which methods write, read or pass through, and what
every call carries, checked when the class is defined.

Tag the interface (a ``typing.Protocol`` or an abstract class) with ``@repository`` and
each of its methods with ``@write``, ``@read`` or ``@passthrough``; the wrapper that
records, replays and mirrors calls is then built from the signatures alone.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import types
import typing
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

WRITE, READ, PASSTHROUGH = "write", "read", "passthrough"
#: Types an argument or result may have: what the call encoding carries exactly.
SCALARS: tuple[type, ...] = (
    int, float, str, bool, bytes, Decimal, dt.datetime, dt.date, dt.time, dt.timedelta,
    uuid.UUID, type(None),
)  # fmt: skip
CONTAINERS = (list, tuple, dict, set, frozenset)

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=type)


class InterfaceError(TypeError):
    """An interface django-mirror cannot mirror, found when the class is defined."""


@dataclass(frozen=True, slots=True)
class BoundCall:
    """A call's arguments bound to its method's signature, defaults applied: ``args`` and
    ``kwargs`` replay it (``self`` left out), ``arguments`` names every value."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    arguments: dict[str, Any]


#: Binds ``(*args, **kwargs)`` of a call (``self`` left out), or raises ``TypeError``.
Binder = Callable[..., BoundCall]


def binder(signature: inspect.Signature) -> Binder:
    """How to bind calls to ``signature``, a method's (with ``self``).

    Generated for the usual signature, positional-or-keyword arguments only, so Python's
    own call binds them: ``Signature.bind`` takes several microseconds a call, and a
    recorded write binds every call. Anything else goes through ``Signature.bind``.
    """
    params = list(signature.parameters.values())[1:]
    if any(
        p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD or p.name.startswith("_mirror_")
        for p in params
    ):  # the generated code's own names would be shadowed by such a parameter

        def bind(*args: Any, **kwargs: Any) -> BoundCall:
            bound = signature.bind(None, *args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            arguments.pop(next(iter(signature.parameters)), None)
            return BoundCall(bound.args[1:], bound.kwargs, arguments)

        return bind
    names: dict[str, Any] = {"_mirror_BoundCall": BoundCall}
    declared = []
    for i, p in enumerate(params):
        if p.default is inspect.Parameter.empty:
            declared.append(p.name)
        else:
            names[f"_mirror_default{i}"] = p.default
            declared.append(f"{p.name}=_mirror_default{i}")
    values = "".join(f"{p.name}, " for p in params)
    arguments = ", ".join(f"{p.name!r}: {p.name}" for p in params)
    source = (
        f"def bind({', '.join(declared)}):\n"
        f"    return _mirror_BoundCall(({values}), {{}}, {{{arguments}}})"
    )
    exec(source, names)  # noqa: S102 - built above from the signature's parameter names
    return names["bind"]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    kind: str
    signature: inspect.Signature
    #: Exceptions returned from the backend as outcomes (recorded and mirrored) rather
    #: than ending the mirroring of the call.
    tolerate: tuple[type[BaseException], ...] = ()
    #: The argument whose value orders calls: one value's calls replay in order.
    partition_key: str | None = None
    #: Turns a read's result (or a write's) into what is compared between stores.
    preprocess: Callable[[Any], Any] | None = None
    #: Arguments that are context (a tenant, a request id): carried, never compared.
    context: tuple[str, ...] = ()

    @functools.cached_property
    def bind(self) -> Binder:
        return binder(self.signature)


@dataclass(frozen=True)
class InterfaceSpec:
    name: str
    methods: dict[str, MethodSpec] = field(default_factory=dict)


def _mark(kind: str, fn: Any = None, **options: Any) -> Any:
    def apply(function: F) -> F:
        function.__mirror_method__ = (kind, options)  # type: ignore[attr-defined]
        return function

    return apply(fn) if fn is not None else apply


def write(
    fn: F | None = None,
    *,
    tolerate: tuple[type[BaseException], ...] = (),
    partition_key: str | None = None,
    context: tuple[str, ...] = (),
    preprocess: Callable[[Any], Any] | None = None,
) -> Any:
    """A write: recorded in phase ``capture``, replayed, and run on the targets too in
    phase ``mirror``. ``tolerate`` lists exceptions that are outcomes, not failures."""
    return _mark(
        WRITE,
        fn,
        tolerate=tolerate,
        partition_key=partition_key,
        context=context,
        preprocess=preprocess,
    )


def read(
    fn: F | None = None,
    *,
    preprocess: Callable[[Any], Any] | None = None,
    tolerate: tuple[type[BaseException], ...] = (),
    context: tuple[str, ...] = (),
) -> Any:
    """A read: answered by the source; in phase ``mirror`` a sample also runs on the
    targets off the request thread, compared after ``preprocess``."""
    return _mark(READ, fn, preprocess=preprocess, tolerate=tolerate, context=context)


def passthrough(fn: F) -> F:
    """Not mirrored: calls go to the source implementation untouched."""
    return _mark(PASSTHROUGH, fn)


def _serialisable(hint: Any) -> bool:
    """Whether the call encoding carries values of this annotation exactly."""
    if hint in SCALARS or hint is None:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return all(_serialisable(arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return all(isinstance(arg, SCALARS) for arg in typing.get_args(hint))
    if origin in CONTAINERS or hint in CONTAINERS:
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if origin is dict and args and args[0] is not str:
            return False
        return all(_serialisable(arg) for arg in args)
    return False


def method_spec(interface: type, name: str, function: Any) -> MethodSpec:
    kind, options = function.__mirror_method__
    signature = inspect.signature(function)
    params = list(signature.parameters.values())[1:]  # self
    if kind == PASSTHROUGH:
        return MethodSpec(name, kind, signature)
    try:
        hints = typing.get_type_hints(function)
    except Exception as exc:
        raise InterfaceError(f"{interface.__qualname__}.{name}: annotations: {exc}") from exc
    where = f"{interface.__qualname__}.{name}"
    for param in params:
        if param.name not in hints:
            raise InterfaceError(f"{where}: argument {param.name!r} needs a type annotation")
        if not _serialisable(hints[param.name]):
            raise InterfaceError(
                f"{where}: argument {param.name!r} of type {hints[param.name]!r} cannot be "
                "recorded; use built-in scalars, dates, UUIDs, Decimals, bytes, and lists, "
                "tuples and str-keyed dicts of them"
            )
    if "return" in hints and not _serialisable(hints["return"]):
        raise InterfaceError(f"{where}: its result of type {hints['return']!r} cannot be recorded")
    names = {p.name for p in params}
    key = options.get("partition_key")
    if key is not None and key not in names:
        raise InterfaceError(f"{where}: partition_key {key!r} is not an argument")
    unknown = set(options.get("context", ())) - names
    if unknown:
        raise InterfaceError(f"{where}: context {sorted(unknown)} are not arguments")
    for error in options.get("tolerate", ()):
        if not (isinstance(error, type) and issubclass(error, BaseException)):
            raise InterfaceError(f"{where}: tolerate holds {error!r}, not an exception class")
    return MethodSpec(
        name,
        kind,
        signature,
        tuple(options.get("tolerate", ())),
        key,
        options.get("preprocess"),
        tuple(options.get("context", ())),
    )


def spec_of(interface: type) -> InterfaceSpec:
    spec = getattr(interface, "__mirror_interface__", None)
    if spec is None:
        raise InterfaceError(f"{interface!r} is not tagged with @repository")
    return spec
