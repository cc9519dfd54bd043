"""Metrics to statsd (configured by the statsd package's own Django settings), the
dashboard's per-minute figures, and mismatch events to Sentry.

statsd and sentry-sdk are optional (the ``[statsd]`` and ``[sentry]`` extras): without
them metrics and events are simply not sent, and the dashboard's figures are kept as
ever.

Every call is guarded: a metric that cannot be sent is counted and dropped, never
raised into the write, relay, replay or read that reported it. Names are listed in
``docs/metrics.md``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

from django_mirror.core import failures
from django_mirror.observability import stats

logger = logging.getLogger("django_mirror.reporting")

#: Every metric name starts with this (after ``STATSD_PREFIX``, if set).
NAMESPACE = "django_mirror"


#: After statsd's host could not be resolved, seconds before trying again.
RETRY_CLIENT_AFTER = 60.0
_broken_until = 0.0


@cache
def _statsd() -> Any:
    """The statsd client, or None when the statsd package is not installed."""
    try:
        from statsd import StatsClient
    except ImportError:
        if getattr(settings, "STATSD_HOST", None):  # metrics were asked for: say why none come
            logger.warning(
                "django-mirror: STATSD_HOST is set but the statsd package is not installed "
                "(the [statsd] extra); metrics are not sent"
            )
        return None
    return StatsClient(
        host=getattr(settings, "STATSD_HOST", "localhost"),
        port=int(getattr(settings, "STATSD_PORT", 8125)),
        prefix=getattr(settings, "STATSD_PREFIX", None),
        maxudpsize=int(getattr(settings, "STATSD_MAXUDPSIZE", 512)),
        ipv6=bool(getattr(settings, "STATSD_IPV6", False)),
    )


def _client() -> Any:
    """The statsd client (None without the statsd package); a host that does not
    resolve is not looked up again on every metric, only once a minute (the client
    resolves it when made)."""
    global _broken_until
    if time.monotonic() < _broken_until:
        raise ConnectionError("statsd host unresolved; retrying later")
    try:
        return _statsd()
    except OSError:
        _broken_until = time.monotonic() + RETRY_CLIENT_AFTER
        raise


@contextmanager
def guarded(what: str, level: int = logging.WARNING) -> Iterator[None]:
    """Swallow and count what goes wrong inside: instrumentation and mirroring never
    break the request or command they serve (like sentry-sdk's
    ``capture_internal_exceptions``)."""
    try:
        yield
    except Exception:
        _swallowed(what, level)


def _swallowed(what: str, level: int) -> None:
    """Count and log the exception being handled."""
    failures.count += 1
    logger.log(level, "django-mirror: %s", what, exc_info=True)


@cache  # a handful of names, made on every committed write
def metric_name(name: str, model: str | None = None) -> str:
    """``django_mirror.<name>[.<app_label>_<model>]``: statsd splits names on dots."""
    if model is None:
        return f"{NAMESPACE}.{name}"
    return f"{NAMESPACE}.{name}.{model.lower().replace('.', '_')}"


#: Seconds between sends of the counters summed and the timers kept meanwhile.
FLUSH_INTERVAL = 1.0
#: Timers kept between sends at the most; past it (the sending thread stalled) new ones
#: are dropped and counted in ``failures.count``, so memory never grows without bound.
MAX_TIMINGS = 100_000


class Sender:
    """Counters summed and timers kept in memory, sent once a second (and at exit),
    several metrics a packet, by one background thread (``runtime`` starts it).

    Counting happens on every committed write and timing on every shadowed read; one
    UDP packet each would cost the writer or the pool more than the rest of its
    bookkeeping. statsd sums counters and aggregates timers over its own flush interval
    anyway, so sending a second's worth together loses nothing. Each metric is kept
    with the client current when it was taken, so it goes where the settings of that
    moment said.
    """

    name = "statsd sender"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[tuple[Any, str], int] = {}
        self.timings: list[tuple[Any, str, float]] = []
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()
        self.sending = failures.RepeatedFailures("statsd", "metrics could not be sent to statsd")

    def count(self, name: str, count: int) -> None:
        try:  # not guarded(): a context manager costs more than the rest of this
            client = _client()
            if client is None:
                return
            key = (client, name)
            with self.lock:
                counts = self.counts
                counts[key] = counts.get(key, 0) + count
        except Exception:
            self.sending.failed()

    def observe(self, name: str, milliseconds: float) -> None:
        try:
            client = _client()
            if client is None:
                return
            with self.lock:
                if len(self.timings) >= MAX_TIMINGS:
                    failures.count += 1
                    return
                self.timings.append((client, name, milliseconds))
        except Exception:
            self.sending.failed()

    def start(self) -> None:
        if self.thread is None or not self.thread.is_alive():
            self.stopping.clear()
            self.thread = threading.Thread(
                target=self._run, name="django-mirror-statsd", daemon=True
            )
            self.thread.start()

    def stop(self, timeout: float) -> None:
        """Send what is held, then close the client's UDP socket (left open, it is
        reported at exit as an unclosed resource)."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout)
        self.flush()
        if _statsd.cache_info().currsize:
            with contextlib.suppress(Exception):
                client = _statsd()
                if client is not None:
                    client.close()
            _statsd.cache_clear()

    def after_fork(self) -> None:
        """A forked worker leaves what the parent took to the parent."""
        self.__init__()  # type: ignore[misc]

    def _run(self) -> None:
        while not self.stopping.wait(FLUSH_INTERVAL):
            self.flush()  # never raises

    def flush(self) -> None:
        with self.lock:
            counts, self.counts = self.counts, {}
            timings, self.timings = self.timings, []
        internal = failures.take_internal_errors()
        if internal:
            try:
                client = _client()
            except Exception:
                self.sending.failed()
            else:
                if client is not None:
                    for task, count in internal.items():
                        key = (client, metric_name(f"internal_errors.{task}"))
                        counts[key] = counts.get(key, 0) + count
        clients: dict[Any, list[tuple[str, str, float]]] = {}
        for (client, name), count in counts.items():
            clients.setdefault(client, []).append(("incr", name, count))
        for client, name, milliseconds in timings:
            clients.setdefault(client, []).append(("timing", name, milliseconds))
        for client, metrics in clients.items():
            try:
                with client.pipeline() as pipe:
                    for kind, name, value in metrics:
                        getattr(pipe, kind)(name, value)
            except Exception:
                self.sending.failed()
            else:
                self.sending.succeeded()


sender = Sender()


def flush() -> None:
    """Send the counters and timers taken so far now, rather than within the second."""
    sender.flush()


def incr(name: str, count: int = 1, model: str | None = None) -> None:
    if count:
        if model is not None:
            stats.add(model, name, count)  # the dashboard's figures, statsd or not
        sender.count(metric_name(name, model), count)


def gauge(name: str, value: float, model: str | None = None) -> None:
    try:
        client = _client()
        if client is not None:
            client.gauge(metric_name(name, model), value)
    except Exception:
        sender.sending.failed()


def timing(name: str, milliseconds: float, model: str | None = None) -> None:
    sender.observe(metric_name(name, model), milliseconds)


def read_latency(store: str, milliseconds: float, model: str) -> None:
    """One read's time on ``store`` ("source" or "target"): a statsd timer and the
    dashboard's histogram."""
    stats.observe(model, store, milliseconds)
    sender.observe(metric_name(f"read.latency.{store}", model), milliseconds)


def sentry_mismatch(
    kind: str, model: str, shape: str, fields: list[str], pks: list[str], message: str
) -> None:
    """One Sentry event per mismatch, grouped into one issue per model and query shape.

    It carries field names and primary keys, never values: fresh, cleared scopes (no
    breadcrumbs, whose SQL parameters could hold values, and none of the request a pool
    thread's scope was copied from) and no stack (whose local variables could).
    """
    with guarded("a mismatch could not be sent to Sentry"):
        try:
            import sentry_sdk
        except ImportError:
            return
        if not sentry_sdk.get_client().is_active():
            return
        with sentry_sdk.isolation_scope() as isolated, sentry_sdk.new_scope() as scope:
            isolated.clear()
            scope.clear()
            scope.set_transaction_name(f"django-mirror {kind} mismatch")
            scope.fingerprint = ["django-mirror", kind, model, shape]
            scope.set_tag("mirror.kind", kind)
            scope.set_tag("mirror.model", model)
            sentry_sdk.capture_event(
                {
                    "message": message,
                    "level": "warning",
                    "logger": "django_mirror",
                    "threads": {"values": []},
                    "extra": {"query": shape, "fields": fields, "pks": pks[:100]},
                }
            )


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    global _broken_until
    if setting.startswith("STATSD_"):
        _statsd.cache_clear()
        _broken_until = 0.0


setting_changed.connect(_on_setting_changed, dispatch_uid="django_mirror.reporting")
