"""Which shard a record goes to, and the put entries a batch of records packs into.

Kinesis places a record by the MD5 of its partition key, unless the record names an
explicit hash key. An aggregated record holds the events of many rows, so relay has to
know the shards' hash ranges to pack only events of one shard together, and names the
first event's hash key explicitly so the record lands where all its events belong.
The map is the one ``ListShards`` returned: a put that lands on another shard than the
map said shows it is stale (the stream was resharded), and it is read again.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from typing import Any

from django_mirror.streams.aggregation import Aggregate, hash_key
from django_mirror.streams.base import Record, Shard

#: Seconds a shard map is trusted before it is read again, resharded or not.
SHARD_MAP_SECONDS = 60.0


class ShardMap:
    """The hash ranges of a stream's shards, as listed at one moment."""

    def __init__(self, shards: list[Shard]) -> None:
        self.read_at = time.monotonic()
        #: Every listed shard's range, closed ones too (replay reads those).
        self.ranges = {s.shard_id: s.hash_range for s in shards if s.hash_range is not None}
        open_shards = sorted(
            (s.hash_range[0], s.shard_id) for s in shards if s.hash_range and not s.closed
        )
        self._starts = [start for start, _ in open_shards]
        self._ids = [shard_id for _, shard_id in open_shards]

    @property
    def stale(self) -> bool:
        return time.monotonic() - self.read_at > SHARD_MAP_SECONDS

    def shard_for(self, hashed: int) -> str | None:
        """The open shard whose range holds ``hashed`` (None on an empty map)."""
        at = bisect.bisect_right(self._starts, hashed) - 1
        return self._ids[at] if at >= 0 else None

    def covers(self, shard_id: str, hashed: int) -> bool:
        """Whether ``hashed`` falls in the shard's range; False for a shard not listed."""
        span = self.ranges.get(shard_id)
        return span is not None and span[0] <= hashed <= span[1]


@dataclass
class Entry:
    """One record of a ``PutRecords`` request: an event as it is, or an aggregate."""

    #: Indexes, in the caller's list, of the records it carries, in order.
    members: list[int]
    data: bytes
    partition_key: str
    #: Set for an aggregate: the hash key that places it, and the shard the map gave.
    explicit_hash_key: int | None = None
    shard_id: str | None = None
    hashes: list[int] = field(default_factory=list)

    @property
    def size(self) -> int:
        """What counts against the record and request limits: data and partition key."""
        return len(self.data) + len(self.partition_key.encode())

    def request(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"Data": self.data, "PartitionKey": self.partition_key}
        if self.explicit_hash_key is not None:
            entry["ExplicitHashKey"] = str(self.explicit_hash_key)
        return entry


def plain(records: list[Record], indexes: list[int]) -> list[Entry]:
    """One entry per record, placed by its partition key."""
    return [Entry([i], records[i].data, records[i].partition_key) for i in indexes]


def _entry(aggregate: Aggregate, records: list[Record], shard_id: str) -> Entry:
    """An aggregate of one record travels as that record: smaller, and plainly readable."""
    first = records[aggregate.members[0]]
    if len(aggregate.members) == 1:
        return Entry(aggregate.members, first.data, first.partition_key)
    return Entry(
        aggregate.members,
        aggregate.encode(),
        first.partition_key,
        aggregate.hashes[0],
        shard_id,
        aggregate.hashes,
    )


def pack(
    records: list[Record], indexes: list[int], shards: ShardMap, max_bytes: int
) -> list[Entry]:
    """The records at ``indexes`` packed per shard into aggregates of up to ``max_bytes``,
    each shard's records in their order (an aggregate that is full goes before the
    records after it). A record too big for an aggregate of its own travels plain; so
    do all records when the map knows no open shard."""
    entries: list[Entry] = []
    building: dict[str, Aggregate] = {}
    for index in indexes:
        record = records[index]
        hashed = hash_key(record.partition_key)
        shard_id = shards.shard_for(hashed)
        if shard_id is None:
            entries.append(Entry([index], record.data, record.partition_key))
            continue
        aggregate = building.get(shard_id)
        if aggregate is not None and aggregate.add(
            index, record.partition_key, hashed, record.data
        ):
            continue
        if aggregate is not None:  # full: it goes before this record
            entries.append(_entry(building.pop(shard_id), records, shard_id))
        aggregate = Aggregate(max_bytes)
        if aggregate.add(index, record.partition_key, hashed, record.data):
            building[shard_id] = aggregate
        else:  # too big to share a record
            entries.append(Entry([index], record.data, record.partition_key))
    entries.extend(_entry(aggregate, records, shard_id) for shard_id, aggregate in building.items())
    return entries
