"""``CacheTarget``: mirrored rows held in a Django ``CACHES`` alias (Redis, or the
local-memory cache for tests and a single-process development server).

Each row is one key, ``<key_prefix>:<app_label.model>:<pk text>`` (under the alias's own
``KEY_PREFIX`` and ``VERSION``), whose value is ``{"v": version, "d": deleted, "row":
{column: value}}``. The row is the event's tagged JSON image kept as it came
(``django_mirror.core.events``), so every value reads back exactly through ``decode_row``;
copied rows are encoded the same way. A delete leaves ``{"v": version, "d": True}``,
expiring after ``tombstone_ttl``; reads hide it.

Replay reads the versions a batch touches (``get_many``) and writes only newer events
(``set_many``). Versions arrive in order per row (one row, one shard, one replay
consumer), so nothing else in replay can slip between that read and that write. Django's
cache API has no conditional write (no compare-and-set), so live mirroring, which races
replay, reads and writes the same way, except that a row the cache does not hold yet
goes in with ``add`` (set if absent, atomic in Redis and the local-memory cache). A live
write racing a replay batch can leave a row at an older version for a moment, and the
newer event that follows it in the stream puts it right; a live write delayed past
replay's newer event for the row stays until the row's next write (``mirror_verify``
finds it; ``mirror_replay --from-start`` rebuilds the cache).

A cache cannot be listed, so ``scan`` is not supported: ``mirror_verify`` compares rows by
primary key and does not see rows only the cache holds. A cache may also evict or expire
rows (``timeout``, Redis ``maxmemory``, the local-memory cache's ``MAX_ENTRIES``): size it
so it does not, or expect verify to report them missing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.cache import BaseCache, caches
from django.db import models

from django_mirror.core.events import (
    UPSERT,
    Event,
    EventDecodeError,
    decode_row,
    encode_column,
    pk_text,
)
from django_mirror.targets.base import ApplyResult, CopyResult, Target, latest_per_row

#: Keys read per ``get_many`` call.
MAX_GET = 500
#: The value's fields: version, deleted, the row's tagged columns.
VERSION, DELETED, ROW = "v", "d", "row"


class CacheTarget(Target):
    """Mirror rows into the ``CACHES`` alias ``cache``, keys under ``key_prefix``.

    ``timeout`` is how long rows live, in whole seconds (None: no expiry; the alias's own
    ``TIMEOUT``, 300 s unless set, is never used, as it would drop rows unseen).
    ``tombstone_ttl`` should exceed the stream's retention.
    """

    def __init__(
        self,
        cache: str = "default",
        key_prefix: str = "mirror",
        timeout: int | None = None,
        tombstone_ttl: int = 8 * 24 * 3600,
    ) -> None:
        if cache not in settings.CACHES:
            raise ValueError(f"CACHES has no alias {cache!r}")
        if timeout is not None and timeout < 1:
            raise ValueError(f"timeout must be at least 1 second or None, not {timeout!r}")
        if tombstone_ttl < 1:
            raise ValueError(f"tombstone_ttl must be at least 1 second, not {tombstone_ttl!r}")
        self.alias = cache
        self.prefix = key_prefix
        self.timeout = timeout
        self.tombstone_ttl = tombstone_ttl

    def describe(self) -> str:
        return f"cache {self.alias!r} (keys {self.prefix}:…)"

    @property
    def cache(self) -> BaseCache:
        """This thread's cache object: Django keeps one per thread and alias."""
        return caches[self.alias]

    def key(self, model_label: str, pk: Any) -> str:
        return f"{self.prefix}:{model_label.lower()}:{pk_text(pk)}"

    # --- values ------------------------------------------------------------------------------

    def _held(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """What the cache holds under ``keys`` (values of another shape count as absent)."""
        unique = list(dict.fromkeys(keys))
        found: dict[str, Any] = {}
        for start in range(0, len(unique), MAX_GET):
            found.update(self.cache.get_many(unique[start : start + MAX_GET]))
        return {k: v for k, v in found.items() if isinstance(v, dict) and VERSION in v}

    @staticmethod
    def _value(model: type[models.Model], event: Event) -> dict[str, Any]:
        """The value to store for an event; its row is decoded once so a bad event is
        refused here rather than when it is read."""
        if event.op != UPSERT:
            return {VERSION: event.version, DELETED: True, ROW: None}
        if not isinstance(event.row, dict):
            raise EventDecodeError("upsert event has no row")
        decode_row(model, event.row)
        return {VERSION: event.version, DELETED: False, ROW: dict(event.row)}

    def _write(self, upserts: dict[str, Any], tombstones: dict[str, Any]) -> None:
        """Rows with ``timeout``, tombstones with ``tombstone_ttl``; keys a backend reports
        it could not store make the batch fail, so replay retries it."""
        refused = []
        if upserts:
            refused += self.cache.set_many(upserts, timeout=self.timeout)
        if tombstones:
            refused += self.cache.set_many(tombstones, timeout=self.tombstone_ttl)
        if refused:
            raise RuntimeError(f"{self.describe()} did not store {len(refused)} keys")

    def _by_model(
        self, events: Sequence[Event], result: ApplyResult
    ) -> Iterator[tuple[type[models.Model], list[Event]]]:
        """Each model's events; those of a model this project lacks go to ``failed``."""
        grouped: dict[str, list[Event]] = {}
        for event in events:
            grouped.setdefault(event.model, []).append(event)
        for label, model_events in grouped.items():
            try:
                model = apps.get_model(label)
            except (LookupError, ValueError) as exc:
                result.failed += [(e, f"{type(exc).__name__}: {exc}") for e in model_events]
                continue
            yield model, model_events

    # --- Target ------------------------------------------------------------------------------

    def apply(self, events: Sequence[Event]) -> ApplyResult:
        """Newer events only, after one ``get_many`` of the versions held: a row's events
        arrive in order, so no other replay write comes between the read and the write."""
        latest = latest_per_row(events)
        result = ApplyResult(stale=len(events) - len(latest))
        for model, model_events in self._by_model(latest, result):
            keys = {id(e): self.key(e.model, e.pk) for e in model_events}
            held = self._held(list(keys.values()))
            upserts: dict[str, Any] = {}
            tombstones: dict[str, Any] = {}
            for event in model_events:
                key = keys[id(event)]
                if key in held and held[key][VERSION] >= event.version:
                    result.stale += 1
                    continue
                try:
                    value = self._value(model, event)
                except (EventDecodeError, TypeError, ValueError) as exc:
                    result.failed.append((event, f"{type(exc).__name__}: {exc}"))
                    continue
                (tombstones if value[DELETED] else upserts)[key] = value
            self._write(upserts, tombstones)
            result.count(model._meta.label, len(upserts) + len(tombstones))
        return result

    def apply_live(self, events: Sequence[Event]) -> ApplyResult:
        """``apply``, but rows the cache does not hold go in with ``add``: of two writers
        that both found a row absent, only one inserts, and the other compares again.
        Rows held are overwritten after the version check (no compare-and-set in Django's
        cache API); replay's in-order events put right an older version left by a race."""
        latest = latest_per_row(events)
        result = ApplyResult(stale=len(events) - len(latest))
        for model, model_events in self._by_model(latest, result):
            keys = {id(e): self.key(e.model, e.pk) for e in model_events}
            held = self._held(list(keys.values()))
            for event in model_events:
                key = keys[id(event)]
                try:
                    value = self._value(model, event)
                except (EventDecodeError, TypeError, ValueError) as exc:
                    result.failed.append((event, f"{type(exc).__name__}: {exc}"))
                    continue
                timeout = self.tombstone_ttl if value[DELETED] else self.timeout
                current = held.get(key)
                if current is None:
                    if self.cache.add(key, value, timeout=timeout):
                        result.count(model._meta.label, 1)
                        continue
                    current = self._held([key]).get(key)
                if current is not None and current[VERSION] >= event.version:
                    result.stale += 1
                    continue
                self.cache.set(key, value, timeout=timeout)
                result.count(model._meta.label, 1)
        return result

    def copy(self, model: type[models.Model], rows: Sequence[dict[str, Any]]) -> CopyResult:
        """Insert-if-absent at version 0 with ``add`` (atomic "set if absent"): a row
        replay wrote, or a tombstone, is never overwritten."""
        result = CopyResult()
        label = model._meta.label
        pk = model._meta.pk.attname
        fields = model._meta.concrete_fields
        keys = [self.key(label, row[pk]) for row in rows]
        held = self._held(keys)
        for key, row in zip(keys, rows, strict=True):
            value = {
                VERSION: 0,
                DELETED: False,
                ROW: {
                    f.column: encode_column(f, row[f.attname]) for f in fields if f.attname in row
                },
            }
            if key not in held and self.cache.add(key, value, timeout=self.timeout):
                result.copied += 1
            else:
                result.skipped += 1
        return result

    def versions(self, model_label: str, pks: Sequence[Any]) -> dict[str, tuple[int, bool]]:
        keys = {self.key(model_label, pk): pk_text(pk) for pk in pks}
        return {
            keys[key]: (int(value[VERSION]), bool(value[DELETED]))
            for key, value in self._held(list(keys)).items()
        }

    def fetch(self, model: type[models.Model], pks: Sequence[Any]) -> dict[str, dict[str, Any]]:
        keys = {self.key(model._meta.label, pk): pk_text(pk) for pk in pks}
        return {
            keys[key]: decode_row(model, value[ROW])
            for key, value in self._held(list(keys)).items()
            if not value[DELETED]
        }

    def scan(
        self, model: type[models.Model], segment: int = 0, segments: int = 1
    ) -> Iterator[dict[str, Any]]:
        raise NotImplementedError(
            f"{self.describe()} cannot be listed: a cache has no scan, so verify compares "
            "its rows by primary key and does not see rows only the cache holds"
        )

    def connected(self) -> bool:
        """Whether the cache answers a read at all (Redis down: it raises)."""
        try:
            self.cache.get(f"{self.prefix}:connected")
        except Exception:
            return False
        return True
