"""Which reads are shadowed: a scope per request (the middleware) or block of code
(``shadow_reads()``), with one random draw that samples each model at its rate."""

from __future__ import annotations

import contextvars
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django_mirror import conf


@dataclass(frozen=True)
class Scope:
    #: One draw per scope: a request is shadowed for every model whose rate exceeds it.
    draw: float
    path: str = ""
    #: Overrides every model's ``shadow_read_rate`` when set.
    rate: float | None = None
    #: A request's comparisons, held until its response has gone out, so they never
    #: compete with it for the CPU (None: queued at once, as in ``shadow_reads()``).
    held: list[Callable[[], None]] | None = None

    def queue(self, job: Callable[[], None]) -> None:
        if self.held is None:
            job()
        else:
            self.held.append(job)

    def release(self) -> None:
        """Queue what was held (the response is closed, or the scope ended)."""
        if self.held:
            jobs, self.held[:] = list(self.held), []
            for job in jobs:
                job()

    def samples(self, config: conf.ModelConfig) -> bool:
        rate = config.shadow_read_rate if self.rate is None else self.rate
        return config.phase in conf.SHADOWING_PHASES and self.draw < rate


_scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "django_mirror_shadow_scope", default=None
)


def current() -> Scope | None:
    return _scope.get()


def current_path() -> str:
    """The path of the request being served, or "" outside requests."""
    scope = _scope.get()
    return scope.path if scope is not None else ""


def enter(path: str, hold: bool) -> tuple[Scope, contextvars.Token[Scope | None]]:
    """Open a scope for this context (the middleware's per-request scope)."""
    scope = Scope(random.random(), path, None, [] if hold else None)
    return scope, _scope.set(scope)


def leave(token: contextvars.Token[Scope | None]) -> None:
    _scope.reset(token)


@contextmanager
def shadow_reads(rate: float | None = None, path: str = "") -> Iterator[Scope]:
    """Shadow reads of mirrored models in this block, sampled at each model's
    ``shadow_read_rate`` (or at ``rate`` for every model), as the middleware does for a
    request: for tasks, commands and other code outside requests."""
    token = _scope.set(Scope(random.random(), path, rate))
    try:
        yield _scope.get()  # type: ignore[misc]
    finally:
        _scope.reset(token)


@contextmanager
def suspended() -> Iterator[None]:
    """No read is shadowed in this block, whatever scope surrounds it (django-mirror's
    own reads of both stores, as the admin's Re-check makes them)."""
    token = _scope.set(None)
    try:
        yield
    finally:
        _scope.reset(token)
