"""A follows repository interface and implementations of it, as a service would write
them: the store behind each is a dict, so tests see exactly what each was asked."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Protocol

from django_mirror.repositories import current_event_id, passthrough, read, repository, write


class AlreadyFollowing(Exception):
    """A non-catastrophic error: the backend says so, and the call is still mirrored."""


@repository
class FollowStore(Protocol):
    @write(partition_key="channel", tolerate=(AlreadyFollowing,))
    def follow(self, user: int, channel: int, *, notify: bool = True) -> int: ...

    @write(partition_key="channel")
    def unfollow(self, user: int, channel: int) -> bool: ...

    @write(partition_key="channel")
    def follow_many(self, channel: int, *users: int) -> int: ...

    @read(preprocess=sorted)
    def followers(self, channel: int, limit: int = 100) -> list[int]: ...

    @passthrough
    def backend(self) -> str: ...


class MemoryFollows:
    """Follows in a dict; each instance remembers the calls it applied, in order."""

    def __init__(self) -> None:
        self.follows: dict[int, dict[int, bool]] = defaultdict(dict)
        self.log: list[tuple[str, int, str | None]] = []
        self.lock = threading.Lock()

    def _logged(self, method: str, channel: int) -> None:
        self.log.append((method, channel, current_event_id()))

    def follow(self, user: int, channel: int, *, notify: bool = True) -> int:
        with self.lock:
            self._logged("follow", channel)
            if user in self.follows[channel]:
                raise AlreadyFollowing(f"{user} follows {channel}")
            self.follows[channel][user] = notify
            return len(self.follows[channel])

    def unfollow(self, user: int, channel: int) -> bool:
        with self.lock:
            self._logged("unfollow", channel)
            return self.follows[channel].pop(user, None) is not None

    def follow_many(self, channel: int, *users: int) -> int:
        with self.lock:
            self._logged("follow_many", channel)
            for user in users:
                self.follows[channel].setdefault(user, True)
            return len(self.follows[channel])

    def followers(self, channel: int, limit: int = 100) -> list[int]:
        return list(reversed(self.follows[channel]))[:limit]  # another order: preprocessed

    def backend(self) -> str:
        return type(self).__name__


class SourceFollows(MemoryFollows):
    pass


class TargetFollows(MemoryFollows):
    pass


class DivergingFollows(MemoryFollows):
    """A candidate store with a bug: it drops notification preferences and miscounts."""

    def follow(self, user: int, channel: int, *, notify: bool = True) -> int:
        return super().follow(user, channel, notify=True) + 1


#: One instance each per test (registry builds them once per settings change).
INTERFACE = "tests.testapp.repositories.FollowStore"
