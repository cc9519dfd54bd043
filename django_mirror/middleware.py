"""``ShadowReadMiddleware``: each request is a shadow-read scope, sampled per model at
its ``shadow_read_rate``, and names the path in mismatch records."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from django_mirror.shadow.scope import shadow_reads


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
        with shadow_reads(path=request.path):
            return self.get_response(request)  # type: ignore[no-any-return]

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        with shadow_reads(path=request.path):
            return await self.get_response(request)  # type: ignore[no-any-return]
