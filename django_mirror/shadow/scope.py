"""Which reads are shadowed: a scope per request (the middleware) or block of code
(``shadow_reads()``), with one random draw that samples each model at its rate."""

from __future__ import annotations

import contextvars
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django_mirror.config import conf
from django_mirror.core import request


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

#: What ``enter`` hands back to ``leave``: the scope's token and the request path's.
Tokens = tuple[contextvars.Token[Scope | None], contextvars.Token[str]]


def current() -> Scope | None:
    return _scope.get()


def enter(path: str, hold: bool = False, rate: float | None = None) -> tuple[Scope, Tokens]:
    """Open a scope for this context (the middleware's per-request scope); its path is
    also the request path that records of a difference name."""
    scope = Scope(random.random(), path, rate, [] if hold else None)
    return scope, (_scope.set(scope), request.set_path(path))


def leave(tokens: Tokens) -> None:
    scope_token, path_token = tokens
    _scope.reset(scope_token)
    request.reset_path(path_token)


@contextmanager
def shadow_reads(rate: float | None = None, path: str = "") -> Iterator[Scope]:
    """Shadow reads of mirrored models in this block, sampled at each model's
    ``shadow_read_rate`` (or at ``rate`` for every model), as the middleware does for a
    request: for tasks, commands and other code outside requests."""
    scope, tokens = enter(path, rate=rate)
    try:
        yield scope
    finally:
        leave(tokens)


@contextmanager
def suspended() -> Iterator[None]:
    """No read is shadowed in this block, whatever scope surrounds it (django-mirror's
    own reads of both stores, as the admin's Re-check makes them)."""
    token = _scope.set(None)
    try:
        yield
    finally:
        _scope.reset(token)
