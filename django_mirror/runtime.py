"""The background threads of a process, started, stopped and renewed after ``fork`` in
one place.

Five services run here: the relay shipper (after-commit shipping), the phase watcher
(run-time phases), the stats writer (the dashboard's figures), the statsd sender and
the shadow pool. ``apps.py`` starts them when Django is set up, so no request ever
waits for a thread to start. A forked child (a gunicorn ``--preload`` worker, a
Celery prefork worker) inherits none of the parent's threads, and maybe a lock one of
them held: each service forgets its parent's state there and starts anew.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Protocol

from django_mirror.capture import record
from django_mirror.observability import reporting, stats
from django_mirror.phases import transitions
from django_mirror.pipeline import relay
from django_mirror.shadow import pool


class Service(Protocol):
    """What a background service offers the runtime."""

    name: str

    def start(self) -> None:
        """Start its threads if they are not running."""

    def stop(self, timeout: float) -> None:
        """Let its threads end (within ``timeout`` seconds) and close their connections."""

    def after_fork(self) -> None:
        """In a forked child: forget the parent's threads, locks and pending work."""


SERVICES: tuple[Service, ...] = (
    relay.shipper,
    transitions.watcher,
    stats.writer,
    reporting.sender,
    pool.service,
)

_lock = threading.Lock()
_running = False


def start() -> None:
    """Start every service (again after ``stop``); idempotent."""
    global _running
    with _lock:
        for service in SERVICES:
            service.start()
        _running = True


def stop(timeout: float = 5.0) -> None:
    """End every service's threads, after they write what they hold (figures, metrics).

    Tests call it before their databases are dropped; a process that just exits need
    not (its threads are daemons, and ``flush_at_exit`` writes what is left).
    """
    global _running
    with _lock:
        _running = False
        for service in SERVICES:
            service.stop(timeout)
    flush_at_exit()


def running() -> bool:
    return _running


def threads() -> list[threading.Thread]:
    """The live threads of every service (for ``mirror_status`` and the tests)."""
    return [t for t in threading.enumerate() if t.name.startswith("django-mirror-")]


def flush_at_exit() -> None:
    """Write what is still held: the dashboard's figures, then the metrics."""
    if stats.writer.dirty:
        stats.flush()
    reporting.flush()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    record.after_fork()
    for service in SERVICES:
        service.after_fork()
    if _running:
        for service in SERVICES:
            service.start()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(flush_at_exit)
