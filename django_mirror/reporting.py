"""Metrics to statsd, configured by the statsd package's own Django settings.

Every call is guarded: a metric that cannot be sent is counted and dropped, never
raised into the write, relay or replay that reported it. Names are listed in
``docs/metrics.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

logger = logging.getLogger("django_mirror.reporting")

#: Every metric name starts with this (after ``STATSD_PREFIX``, if set).
NAMESPACE = "django_mirror"

#: Reporting failures swallowed so far in this process (for tests and the curious).
failures = 0


@cache
def _client() -> Any:
    from statsd import StatsClient

    return StatsClient(
        host=getattr(settings, "STATSD_HOST", "localhost"),
        port=int(getattr(settings, "STATSD_PORT", 8125)),
        prefix=getattr(settings, "STATSD_PREFIX", None),
        maxudpsize=int(getattr(settings, "STATSD_MAXUDPSIZE", 512)),
        ipv6=bool(getattr(settings, "STATSD_IPV6", False)),
    )


@contextmanager
def _guarded() -> Iterator[None]:
    global failures
    try:
        yield
    except Exception:  # instrumentation never breaks what it measures
        failures += 1
        logger.debug("django-mirror: a metric could not be sent", exc_info=True)


def metric_name(name: str, model: str | None = None) -> str:
    """``django_mirror.<name>[.<app_label>_<model>]``: statsd splits names on dots."""
    if model is None:
        return f"{NAMESPACE}.{name}"
    return f"{NAMESPACE}.{name}.{model.lower().replace('.', '_')}"


def incr(name: str, count: int = 1, model: str | None = None) -> None:
    if count:
        with _guarded():
            _client().incr(metric_name(name, model), count)


def gauge(name: str, value: float, model: str | None = None) -> None:
    with _guarded():
        _client().gauge(metric_name(name, model), value)


def timing(name: str, milliseconds: float, model: str | None = None) -> None:
    with _guarded():
        _client().timing(metric_name(name, model), milliseconds)


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith("STATSD_"):
        _client.cache_clear()


setting_changed.connect(_on_setting_changed, dispatch_uid="django_mirror.reporting")
