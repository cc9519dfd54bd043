"""``DJANGO_MIRROR['STREAM']``: its keys, a backend that imports, and ``OPTIONS`` its
constructor takes, ``KinesisStream``'s of the right type and range (E008, E009, E024,
E026)."""

from __future__ import annotations

import inspect
from typing import Any

from django.core.checks import Error
from django.utils.module_loading import import_string

from django_mirror.checks.options import importable, unknown_keys
from django_mirror.config import conf


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
    errors = [] if open_ended else unknown_keys(where, options, accepted, "django_mirror.E026")
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


def _kinesis_values(options: dict[str, Any]) -> list[Any]:
    """Values of ``KinesisStream``'s own options that its constructor would take but
    cannot use: ``"no"`` for ``aggregate`` would turn aggregation on, a size above the
    record limit would have every full aggregate refused."""
    from django_mirror.streams.kinesis import MAX_AGGREGATE_BYTES, MIN_AGGREGATE_BYTES

    where = "DJANGO_MIRROR['STREAM']['OPTIONS']"
    errors = []
    if "aggregate" in options and not isinstance(options["aggregate"], bool):
        errors.append(
            Error(
                f"{where}['aggregate'] is {options['aggregate']!r}.",
                hint="Give True (events packed into KPL-aggregated records) or False.",
                id="django_mirror.E026",
            )
        )
    size = options.get("aggregate_max_bytes")
    if "aggregate_max_bytes" in options and (
        not isinstance(size, int)
        or isinstance(size, bool)
        or not MIN_AGGREGATE_BYTES <= size <= MAX_AGGREGATE_BYTES
    ):
        errors.append(
            Error(
                f"{where}['aggregate_max_bytes'] is {size!r}.",
                hint=f"Give an integer from {MIN_AGGREGATE_BYTES} to {MAX_AGGREGATE_BYTES} "
                "(a Kinesis record holds at most 1 MiB with its partition key).",
                id="django_mirror.E026",
            )
        )
    return errors


def stream_errors(raw: Any, stream: conf.StreamSettings) -> list[Any]:
    """The stream as written (``raw``) and as merged over the defaults (``stream``)."""
    from django_mirror.streams import KinesisStream

    errors = unknown_keys(
        "DJANGO_MIRROR['STREAM']", raw, conf.section_keys(conf.StreamSettings), "django_mirror.E024"
    )
    options = raw.get("OPTIONS") if isinstance(raw, dict) else None
    if options is not None and not isinstance(options, dict):
        return [
            *errors,
            Error("DJANGO_MIRROR['STREAM']['OPTIONS'] must be a dict.", id="django_mirror.E001"),
        ]
    if not importable(stream.backend):
        errors.append(
            Error(
                f"DJANGO_MIRROR['STREAM']['BACKEND'] {stream.backend!r} cannot be imported.",
                hint="Use 'django_mirror.streams.KinesisStream' or the dotted path of your class.",
                id="django_mirror.E008",
            )
        )
    else:
        backend = import_string(stream.backend)
        errors += _check_stream_options(backend, stream.options)
        if isinstance(backend, type) and issubclass(backend, KinesisStream):
            errors += _kinesis_values(stream.options)
    if stream.backend == conf.StreamSettings.backend:
        for option in ("stream_name", "region_name"):
            if not stream.options.get(option):
                errors.append(
                    Error(
                        f"DJANGO_MIRROR['STREAM']['OPTIONS'] lacks {option!r}.",
                        id="django_mirror.E009",
                    )
                )
    return errors
