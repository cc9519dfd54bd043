"""A follows repository interface for the repository benchmark, and its implementation.

The no-op methods return a constant, so timing them through the generated wrapper
against the implementation measures the wrapper alone; ``follow`` saves one
``PlainFollow`` row, the unmirrored twin of the row-capture benchmark's ``Follow``.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol

from benchmarks.benchapp.models import PlainFollow
from django_mirror.repositories import read, repository, write

CREATED_AT = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


@repository
class FollowStore(Protocol):
    @write(partition_key="channel")
    def follow(self, user: int, channel: int) -> int: ...

    @write(partition_key="channel")
    def noop_write(self, user: int, channel: int) -> int: ...

    @read
    def noop_read(self, channel: int) -> int: ...


class PlainFollows:
    """The source implementation: rows in ``PlainFollow``, written through the ORM."""

    def follow(self, user: int, channel: int) -> int:
        row = PlainFollow(user_id=user, channel_id=channel, created_at=CREATED_AT, origin="web")
        row.save()
        return row.pk  # type: ignore[no-any-return]

    def noop_write(self, user: int, channel: int) -> int:
        return 0

    def noop_read(self, channel: int) -> int:
        return 0


INTERFACE = "benchmarks.benchapp.repositories.FollowStore"
SOURCE = "benchmarks.benchapp.repositories.PlainFollows"
