"""Calls as events: their encoding, their recording in the outbox (so they share the
stream, versions and ordering of row events), and their replay onto a target.

A call event is an ``Event`` with op ``call``; its ``model`` is the interface's name,
its ``pk`` the partition key's value (calls with one value share a shard, so replay
keeps their order), and its ``row`` ``{"method", "args", "kwargs", "outcome"}``. An
outcome is ``{"return": value}`` or ``{"error": {"type": name, "message": text}}``.
"""

from __future__ import annotations

import contextvars
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.utils import timezone

from django_mirror.config import conf
from django_mirror.core.events import Event, decode_value, encode_value, pk_text
from django_mirror.observability import reporting
from django_mirror.repositories import registry
from django_mirror.repositories.interface import BoundCall, InterfaceSpec, MethodSpec

logger = logging.getLogger("django_mirror.repositories")

_event_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "django_mirror_call_event", default=None
)


def current_event_id() -> str | None:
    """The id of the call event being replayed, for a target to deduplicate by (None
    outside replay, and for live calls, which are not replayed twice by us)."""
    return _event_id.get()


@contextmanager
def replaying(event_id: str) -> Iterator[None]:
    token = _event_id.set(event_id)
    try:
        yield
    finally:
        _event_id.reset(token)


# --- encoding ---------------------------------------------------------------------------------


def encode(value: Any) -> Any:
    """A call's argument or result as JSON, exactly (the events' tags, plus containers)."""
    if isinstance(value, dict):
        return {"$map": {str(k): encode(v) for k, v in value.items()}}
    if isinstance(value, tuple):
        return {"$tuple": [encode(v) for v in value]}
    if isinstance(value, set | frozenset):
        return {"$set": sorted((encode(v) for v in value), key=json.dumps)}
    if isinstance(value, list):
        return {"$seq": [encode(v) for v in value]}
    return encode_value(value)


def decode(value: Any) -> Any:
    if isinstance(value, dict) and len(value) == 1:
        ((tag, raw),) = value.items()
        if tag == "$map":
            return {k: decode(v) for k, v in raw.items()}
        if tag == "$tuple":
            return tuple(decode(v) for v in raw)
        if tag == "$set":
            return {decode(v) for v in raw}
        if tag == "$seq":
            return [decode(v) for v in raw]
    return decode_value(value)


def outcome(result: Any = None, error: BaseException | None = None) -> dict[str, Any]:
    if error is not None:
        return {"error": {"type": type(error).__name__, "message": str(error)[:2000]}}
    return {"return": encode(result)}


def comparable(method: MethodSpec, recorded: dict[str, Any]) -> Any:
    """What two outcomes are compared by: the error's type, or the preprocessed result."""
    if "error" in recorded:
        return {"error": recorded["error"]["type"]}
    value = decode(recorded["return"])
    if method.preprocess is not None:
        value = method.preprocess(value)
    return {"return": encode(value)}


# --- recording --------------------------------------------------------------------------------


def bound_call(method: MethodSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> BoundCall:
    """The call's arguments bound to the signature (defaults applied): what replays it."""
    return method.bind(*args, **kwargs)


def partition(method: MethodSpec, bound: BoundCall) -> Any:
    if method.partition_key is None:
        return "-"
    return bound.arguments[method.partition_key]


def record(
    interface: InterfaceSpec,
    method: MethodSpec,
    bound: BoundCall,
    result: dict[str, Any],
    using: str | None = None,
    live: list[str] | None = None,
) -> None:
    """Add the call to the outbox, in the caller's transaction if there is one (a call
    rolled back with its transaction leaves no event)."""
    from django_mirror.capture.outbox import Payload
    from django_mirror.capture.record import record_payload  # they need the app's models

    using = using or conf.source_alias()
    payload = Payload(
        tx="",  # the transaction's id, set as it is stored
        now=timezone.now(),
        source=using,
        columns=("method", "args", "kwargs", "outcome", "live"),
        ops=[
            [
                "c",
                encode_value(pk_text(partition(method, bound))),
                [
                    method.name,
                    [encode(a) for a in bound.args],
                    {k: encode(v) for k, v in bound.kwargs.items()},
                    result,
                    live or [],  # the targets that ran it already: replay skips them
                ],
            ]
        ],
    )
    record_payload(using, interface.name, payload)


# --- replay ------------------------------------------------------------------------------------


def dispatch(event: Event, include_live: bool = False) -> int:
    """Replay one call event on every target implementation of its interface; a target
    whose outcome differs from the recorded one is a write mismatch. Targets that ran
    the call live (phase ``mirror``) are skipped, unless ``include_live`` (a replay from
    the start, into rebuilt targets). Returns the number of targets called."""
    config = registry.config_for(event.model)
    if config is None:
        raise LookupError(f"{event.model} is not a mirrored repository here")
    row = event.row or {}
    method = config.spec.methods.get(str(row.get("method")))
    if method is None:
        raise LookupError(f"{event.model} has no method {row.get('method')!r}")
    args = [decode(a) for a in row.get("args", [])]
    kwargs = {k: decode(v) for k, v in row.get("kwargs", {}).items()}
    called = 0
    live = set() if include_live else set(row.get("live") or ())
    for name, target in config.targets().items():
        if name in live:
            continue
        with replaying(event.id):
            replayed = replay_on(target, method, args, kwargs)
        called += 1
        if comparable(method, replayed) != comparable(method, row.get("outcome", {})):
            mismatch(config.name, name, method, pk_text(event.pk), row.get("outcome"), replayed)
    return called


def run(
    implementation: Any, method: MethodSpec, args: list[Any], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Call the method on one implementation; any exception is its outcome."""
    try:
        return outcome(getattr(implementation, method.name)(*args, **kwargs))
    except Exception as exc:
        return outcome(error=exc)


def replay_on(
    implementation: Any, method: MethodSpec, args: list[Any], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Call the method on one target in replay: only the exceptions the interface
    tolerates are outcomes (as they were when recorded); anything else propagates, to
    stop replay (``core.outages.infrastructure_error``) or dead-letter the call."""
    try:
        return outcome(getattr(implementation, method.name)(*args, **kwargs))
    except method.tolerate as exc:
        return outcome(error=exc)


def mismatch(
    interface: str,
    target: str,
    method: MethodSpec,
    key: str,
    expected: Any,
    got: Any,
    kind: str = "write",
    path: str = "",
) -> None:
    """A target answered a call differently: counted, recorded, sent to Sentry."""
    from django_mirror.models import MismatchRecord

    reporting.incr(f"{kind}.mismatch", 1, interface)
    with reporting.guarded("a repository mismatch could not be recorded"):
        MismatchRecord.objects.using(conf.source_alias()).create(
            kind=kind,
            status=MismatchRecord.Status.CONFIRMED,
            model=interface[:200],
            pk_value=key[:255],
            request_path=path[:500],
            query=f"{method.name} on {target}",
            source_value=expected,
            target_value=got,
            diff={"method": method.name, "target": target},
        )
    reporting.sentry_mismatch(
        kind,
        interface,
        method.name,
        [method.name],
        [key],
        f"django-mirror: {kind} mismatch on {interface}",
    )
