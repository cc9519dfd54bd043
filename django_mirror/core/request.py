"""The path of the request being served, which records of a difference name.

Set by the shadow-read middleware and ``shadow_reads()``; read by whoever records a
difference (a live apply's write mismatch, a repository call's), whatever layer it is in.
"""

from __future__ import annotations

import contextvars

_path: contextvars.ContextVar[str] = contextvars.ContextVar(
    "django_mirror_request_path", default=""
)


def current_path() -> str:
    """The path of the request being served, or "" outside requests."""
    return _path.get()


def set_path(path: str) -> contextvars.Token[str]:
    return _path.set(path)


def reset_path(token: contextvars.Token[str]) -> None:
    _path.reset(token)
