"""The background workers that run shadow reads off the request thread.

A bounded queue in front of ``SHADOW["POOL_SIZE"]`` threads: when it is full the
comparison is skipped and counted, so a slow target never holds up or piles up
behind the requests. Re-checks wait on a timer heap until they are due.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from django.core.signals import setting_changed
from django.db import connections

from django_mirror.config import conf

logger = logging.getLogger("django_mirror.shadow")

Job = Callable[[], None]

#: Seconds an idle worker waits for a job before it looks whether its pool was closed.
IDLE_POLL = 1.0


class ShadowPool:
    def __init__(self, size: int, queue_size: int) -> None:
        self.size = size
        self.jobs: queue.Queue[Job] = queue.Queue(maxsize=queue_size)
        self.delayed: list[tuple[float, int, Job]] = []
        self.order = itertools.count()
        self.lock = threading.Lock()
        #: Signalled when a re-check is added (the timer thread waits on it) ...
        self.due = threading.Condition(self.lock)
        #: ... and when the last pending job is done (``wait_idle`` waits on it).
        self.idle = threading.Condition(self.lock)
        #: Jobs queued, waiting for their time, or running.
        self.pending = 0
        #: Set by ``close()``: the threads end once nothing is pending.
        self.closing = False
        self.threads = [
            threading.Thread(target=self._work, name=f"django-mirror-shadow-{i}", daemon=True)
            for i in range(size)
        ]
        self.timer = threading.Thread(
            target=self._release, name="django-mirror-recheck", daemon=True
        )
        for thread in [*self.threads, self.timer]:
            thread.start()

    def submit(self, job: Job) -> bool:
        """Queue a job; False (and nothing queued) when the queue is full."""
        with self.lock:
            if not self.closing:
                try:
                    self.jobs.put_nowait(job)
                except queue.Full:
                    return False
                self.pending += 1
                return True
        return get_pool().submit(job)  # raced with a settings change: the new pool takes it

    def later(self, delay: float, job: Job) -> None:
        """Run ``job`` after ``delay`` seconds (re-checks are never skipped for space)."""
        with self.lock:
            if not self.closing:
                heapq.heappush(self.delayed, (time.monotonic() + delay, next(self.order), job))
                self.pending += 1
                self.due.notify()
                return
        get_pool().later(delay, job)  # raced with a settings change: the new pool takes it

    def close(self, discard: bool = False) -> None:
        """Let the threads finish every job queued or waiting for its time, then end and
        close their database connections (an abandoned pool would hold them open).

        With ``discard`` (the process or its tests are ending) what has not started is
        dropped: a re-check waits seconds for its time, and a test database cannot be
        dropped while a worker holds a connection to it.
        """
        with self.lock:
            self.closing = True
            if discard:
                dropped = len(self.delayed)
                self.delayed.clear()
                while True:
                    try:
                        self.jobs.get_nowait()
                    except queue.Empty:
                        break
                    dropped += 1
                self.pending -= dropped
                if not self.pending:
                    self.idle.notify_all()
            self.due.notify_all()

    def _done(self) -> bool:
        with self.lock:
            return self.closing and not self.pending

    def _release(self) -> None:
        while True:
            with self.lock:
                while not self.delayed:
                    if self.closing:
                        return
                    self.due.wait()
                due, _, job = self.delayed[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self.due.wait(wait)
                    continue
                heapq.heappop(self.delayed)
            self.jobs.put(job)

    def _work(self) -> None:
        while not self._done():
            try:
                job = self.jobs.get(timeout=IDLE_POLL)
            except queue.Empty:
                continue
            try:
                job()
            except Exception:  # a job reports its own failures; this is the last net
                logger.warning("django-mirror: a shadow read failed", exc_info=True)
            finally:
                # A connection is kept between jobs; one that saw an error is checked
                # (a round trip) and closed if it is broken.
                for connection in connections.all(initialized_only=True):
                    if connection.errors_occurred:
                        self._check(connection)
                with self.lock:
                    self.pending -= 1
                    if not self.pending:
                        self.idle.notify_all()
        connections.close_all()  # this thread's connections only

    @staticmethod
    def _check(connection: Any) -> None:
        """Keep a connection that is still good after an error; close one that is not
        (or never opened: a target that was down)."""
        try:
            usable = connection.connection is not None and connection.is_usable()
        except Exception:
            usable = False
        if usable:
            connection.errors_occurred = False
        else:
            connection.close()

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the threads of a closed pool to end."""
        deadline = time.monotonic() + timeout
        for thread in [*self.threads, self.timer]:
            thread.join(max(0.0, deadline - time.monotonic()))

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until no job is queued, running or waiting for its re-check (for tests,
        benchmarks and commands that end); False if that took longer than ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while self.pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.idle.wait(left)
        return True


_pool: ShadowPool | None = None
_pool_lock = threading.Lock()


def get_pool() -> ShadowPool:
    """The process's pool, with the ``SHADOW`` settings (``runtime`` starts it, and a
    settings change replaces it)."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                shadow = conf.get_settings().shadow
                _pool = ShadowPool(shadow.pool_size, shadow.queue_size)
    return _pool


def reset_pool(discard: bool = False) -> ShadowPool | None:
    """Forget the pool so the next use starts one with the current settings; the old
    one's threads finish what they hold (or, with ``discard``, what they are running),
    then end. Returns the old one."""
    global _pool
    with _pool_lock:
        old, _pool = _pool, None  # gone before it closes: get_pool() never returns it then
    if old is not None:
        old.close(discard)
    return old


class Service:
    """The pool as ``runtime`` runs it."""

    name = "shadow pool"

    def start(self) -> None:
        get_pool()

    def stop(self, timeout: float) -> None:
        old = reset_pool(discard=True)
        if old is not None:
            old.join(timeout)

    def after_fork(self) -> None:
        """The parent's pool has no threads here (nor its lock a holder): start afresh."""
        global _pool, _pool_lock
        _pool, _pool_lock = None, threading.Lock()


service = Service()


def _on_setting_changed(*, setting: str, **kwargs: object) -> None:
    if setting == "DJANGO_MIRROR" and reset_pool() is not None:
        get_pool()  # a running pool is replaced at once, not by the next request


setting_changed.connect(_on_setting_changed, dispatch_uid="django_mirror.shadow.pool")
