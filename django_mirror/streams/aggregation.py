"""The KPL aggregated record format: many user records in one Kinesis record.

One Kinesis record costs a put's per-record quota (1,000 records/s per shard) whatever
its size; packing the events bound for one shard into one record spends the byte quota
instead. The layout is the Kinesis Producer Library's, which AWS Lambda's and the KCL's
de-aggregation read::

    F3 89 9A C2 | protobuf AggregatedRecord | MD5 of the protobuf (16 bytes)

    message AggregatedRecord {
      repeated string partition_key_table = 1;
      repeated string explicit_hash_key_table = 2;
      repeated Record records = 3;
    }
    message Record {
      required uint64 partition_key_index = 1;
      optional uint64 explicit_hash_key_index = 2;
      required bytes data = 3;
      repeated Tag tags = 4;
    }

Written here rather than with ``aws-kinesis-agg``: that package (last released 2022)
puts its own folder first on ``sys.path`` when imported, needs ``six`` without declaring
it, and yields a record whose MD5 does not match as if it were a plain record, where
replay must dead-letter it. The format is small enough to own, and needs no protobuf
runtime.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import NamedTuple

MAGIC = b"\xf3\x89\x9a\xc2"
DIGEST_BYTES = 16
#: Field keys (number << 3 | wire type 2, length-delimited) of the fields written.
_PARTITION_KEY = b"\x0a"  # AggregatedRecord.partition_key_table
_RECORD = b"\x1a"  # AggregatedRecord.records
_INDEX = b"\x08"  # Record.partition_key_index (varint)
_DATA = b"\x1a"  # Record.data


class CorruptAggregate(ValueError):
    """A record that starts as an aggregated record but cannot be read as one."""


def hash_key(partition_key: str) -> int:
    """The 128-bit hash key Kinesis maps ``partition_key`` to (its MD5, big-endian)."""
    return int.from_bytes(hashlib.md5(partition_key.encode()).digest(), "big")


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


#: Encoded varints of the small numbers (lengths, indexes) that make up most of them.
_SMALL = [_varint(n) for n in range(1 << 14)]


def varint(value: int) -> bytes:
    return _SMALL[value] if value < 16384 else _varint(value)


@dataclass
class Aggregate:
    """User records bound for one shard, in order, packed as they are added, up to
    ``max_bytes`` for the whole record."""

    max_bytes: int = 1024 * 1024
    #: Indexes (in the caller's list) of the user records held, in order.
    members: list[int] = field(default_factory=list)
    #: Hash key of each member's partition key.
    hashes: list[int] = field(default_factory=list)
    _keys: dict[str, int] = field(default_factory=dict)
    _parts: list[bytes] = field(default_factory=list)
    _size: int = len(MAGIC) + DIGEST_BYTES

    @property
    def size(self) -> int:
        """Bytes of the aggregated record as it stands."""
        return self._size

    def add(self, member: int, partition_key: str, hashed: int, data: bytes) -> bool:
        """Add the user record if the aggregate stays within ``max_bytes``; False if not."""
        index = self._keys.get(partition_key)
        table_entry = b""
        if index is None:
            index = len(self._keys)
            key = partition_key.encode()
            table_entry = _PARTITION_KEY + varint(len(key)) + key
        record = _INDEX + varint(index) + _DATA + varint(len(data)) + data
        part = table_entry + _RECORD + varint(len(record)) + record
        if self._size + len(part) > self.max_bytes:
            return False
        if table_entry:
            self._keys[partition_key] = index
        self._parts.append(part)
        self._size += len(part)
        self.members.append(member)
        self.hashes.append(hashed)
        return True

    def encode(self) -> bytes:
        """The Kinesis record's data. Partition keys and records interleave: protobuf
        reads a repeated field's entries in order wherever they stand."""
        message = b"".join(self._parts)
        return MAGIC + message + hashlib.md5(message).digest()


def _read_varint(data: bytes, at: int, stop: int) -> tuple[int, int]:
    if at < stop and data[at] < 0x80:  # most: a key, a small index or length
        return data[at], at + 1
    value = shift = 0
    while True:
        if at >= stop or shift > 63:
            raise CorruptAggregate("truncated or overlong varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


#: A field as ``_fields`` finds it: number, then the value and -1 for a varint, or the
#: start and end offsets of a length-delimited value.
Field = tuple[int, int, int]


def _fields(data: bytes, at: int, stop: int) -> list[Field]:
    """The fields of the protobuf message in ``data[at:stop]``, by offset, so no value is
    copied before it is used; fixed-width fields are skipped (none are defined here)."""
    fields: list[Field] = []
    while at < stop:
        key, at = _read_varint(data, at, stop)
        number, wire = key >> 3, key & 7
        if wire == 2:
            length, at = _read_varint(data, at, stop)
            if at + length > stop:
                raise CorruptAggregate("a field runs past the end of the record")
            fields.append((number, at, at + length))
            at += length
        elif wire == 0:
            value, at = _read_varint(data, at, stop)
            fields.append((number, value, -1))
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
        else:
            raise CorruptAggregate(f"unsupported protobuf wire type {wire}")
    if at != stop:
        raise CorruptAggregate("a fixed-width field runs past the end of the record")
    return fields


class UserRecord(NamedTuple):
    """One event of an aggregated record (a named tuple: made for every event read)."""

    partition_key: str
    #: The hash key that placed it: its explicit hash key, else its partition key's.
    hash_key: int
    data: bytes


def is_aggregated(data: bytes) -> bool:
    return data[: len(MAGIC)] == MAGIC


def deaggregate(data: bytes) -> list[UserRecord]:
    """The user records of an aggregated record, in order; ``CorruptAggregate`` when its
    digest or protobuf is not right."""
    if len(data) < len(MAGIC) + DIGEST_BYTES or not is_aggregated(data):
        raise CorruptAggregate("too short for an aggregated record")
    message, digest = data[len(MAGIC) : -DIGEST_BYTES], data[-DIGEST_BYTES:]
    if hashlib.md5(message).digest() != digest:
        raise CorruptAggregate("MD5 digest does not match")
    keys: list[str] = []
    explicit: list[str] = []
    records: list[tuple[int, int]] = []
    tables = {1: keys, 2: explicit}
    for number, first, end in _fields(message, 0, len(message)):
        if end < 0:
            raise CorruptAggregate(f"field {number} of AggregatedRecord is not bytes")
        if number == 3:
            records.append((first, end))
        elif number in tables:
            try:
                tables[number].append(message[first:end].decode())
            except UnicodeDecodeError:
                raise CorruptAggregate("a key table entry is not UTF-8") from None
    try:
        hashes = [hash_key(key) for key in keys]
        explicit_hashes = [int(key) for key in explicit]
    except ValueError:
        raise CorruptAggregate("an explicit hash key is not a number") from None
    return [
        _user_record(message, first, end, keys, hashes, explicit_hashes) for first, end in records
    ]


def _user_record(
    message: bytes, first: int, stop: int, keys: list[str], hashes: list[int], explicit: list[int]
) -> UserRecord:
    """The ``Record`` in ``message[first:stop]``: its partition key index (field 1),
    explicit hash key index (2) and data (3)."""
    # The layout every producer writes for a record without tags: 08 index 1A length data.
    if (
        stop - first > 3
        and message[first] == 0x08
        and message[first + 1] < 0x80
        and message[first + 2] == 0x1A
    ):
        index, (length, start) = message[first + 1], _read_varint(message, first + 3, stop)
        if start + length == stop and index < len(keys):
            return UserRecord(keys[index], hashes[index], message[start:stop])
    values = {number: (value, end) for number, value, end in _fields(message, first, stop)}
    index, index_end = values.get(1, (0, 0))
    start, end = values.get(3, (0, -1))
    if index_end != -1 or end == -1:  # missing, or not a varint and bytes
        raise CorruptAggregate("a record lacks its partition key index or data")
    if index >= len(keys):
        raise CorruptAggregate(f"partition key index {index} is out of range")
    if 2 not in values:
        return UserRecord(keys[index], hashes[index], message[start:end])
    explicit_index, explicit_end = values[2]
    if explicit_end != -1 or explicit_index >= len(explicit):
        raise CorruptAggregate("an explicit hash key index is out of range")
    return UserRecord(keys[index], explicit[explicit_index], message[start:end])
