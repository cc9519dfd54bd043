"""``ShadowReadMiddleware``: each request is a shadow-read scope, sampled per model at
its ``shadow_read_rate``, and names the path in mismatch records. Its comparisons are
queued once the response is closed (sent), never while the request is being served."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from django_mirror.shadow import scope


class ShadowReadMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.is_async:
            return self.__acall__(request)
        current, token = scope.enter(request.path, hold=True)
        try:
            response = self.get_response(request)
        finally:
            scope.leave(token)
        return _released_on_close(response, current)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        current, token = scope.enter(request.path, hold=True)
        try:
            response = await self.get_response(request)
        finally:
            scope.leave(token)
        return _released_on_close(response, current)


def _released_on_close(response: HttpResponse, current: scope.Scope) -> HttpResponse:
    """The request's comparisons go to the pool when the server closes the response."""
    closers = getattr(response, "_resource_closers", None)
    if isinstance(closers, list):
        closers.append(current.release)
    else:
        current.release()
    return response
