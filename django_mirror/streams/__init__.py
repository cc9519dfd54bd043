"""Where events travel between the source's outbox and replay.

``Stream`` is the small interface relay and replay need; ``KinesisStream`` is the one
we ship. The configured instance is built once per settings value.
"""

from __future__ import annotations

from functools import cache

from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from django_mirror.config import conf
from django_mirror.streams.base import (
    Batch,
    PositionExpired,
    PositionInvalid,
    Record,
    Shard,
    Stream,
    StreamError,
    StreamNotFound,
)
from django_mirror.streams.kinesis import KinesisStream

__all__ = [
    "Batch",
    "KinesisStream",
    "PositionExpired",
    "PositionInvalid",
    "Record",
    "Shard",
    "Stream",
    "StreamError",
    "StreamNotFound",
    "get_stream",
]


@cache
def get_stream() -> Stream:
    """The stream ``DJANGO_MIRROR["STREAM"]`` configures."""
    stream = conf.get_settings().stream
    backend = import_string(stream.backend)
    return backend(**stream.options)


def _on_setting_changed(*, setting: str, **kwargs: object) -> None:
    if setting in conf.RECONFIGURING:
        get_stream.cache_clear()


setting_changed.connect(_on_setting_changed, dispatch_uid="django_mirror.streams")
