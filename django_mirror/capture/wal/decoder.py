"""The ``pgoutput`` logical replication protocol (version 1), read from the bytes
``pg_logical_slot_peek_binary_changes`` returns: one message per row.

Only what capture needs is decoded; a message it does not know is an error, never
skipped, so a change is never lost to a format it misread.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

#: A column the update left alone because its value is TOASTed and unchanged ('u').
UNCHANGED = object()

_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")
_UINT32 = struct.Struct("!I")
_INT64 = struct.Struct("!q")
_UINT64 = struct.Struct("!Q")


class DecodeError(ValueError):
    """A message is not pgoutput protocol version 1 as capture reads it."""


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    #: Part of the replica identity (the key an update or delete names its old row by).
    key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    """A table as the log describes it, sent before the first change to it."""

    oid: int
    namespace: str
    name: str
    #: 'd' default (primary key), 'n' nothing, 'f' full, 'i' an index.
    replica_identity: str
    columns: tuple[Column, ...]


#: One tuple's values by position: text, None for NULL, or ``UNCHANGED``.
Tuple = tuple[str | None | object, ...]


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_time: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    commit_lsn: int
    #: The end of the commit record: confirming the slot up to here skips the transaction.
    end_lsn: int
    commit_time: int


@dataclass(frozen=True, slots=True)
class Change:
    """An insert, update or delete of one row."""

    kind: str  # "insert" | "update" | "delete"
    relation_oid: int
    new: Tuple | None = None
    #: The old key ('K') or whole old row ('O', REPLICA IDENTITY FULL), where sent.
    old: Tuple | None = None
    old_is_key: bool = False


@dataclass(frozen=True, slots=True)
class Truncate:
    relation_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Message:
    """``pg_logical_emit_message()`` output."""

    transactional: bool
    prefix: str
    content: bytes


@dataclass(frozen=True, slots=True)
class Origin:
    """The transaction was replayed from a replication origin."""

    name: str


Decoded = Begin | Commit | Relation | Change | Truncate | Message | Origin | None


@dataclass
class _Reader:
    data: bytes
    pos: int = 0

    def take(self, size: int) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise DecodeError("message ends early")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def byte(self) -> str:
        return chr(self.take(1)[0])

    def int8(self) -> int:
        return self.take(1)[0]

    def int16(self) -> int:
        return int(_INT16.unpack(self.take(2))[0])

    def int32(self) -> int:
        return int(_INT32.unpack(self.take(4))[0])

    def uint32(self) -> int:
        return int(_UINT32.unpack(self.take(4))[0])

    def int64(self) -> int:
        return int(_INT64.unpack(self.take(8))[0])

    def uint64(self) -> int:
        return int(_UINT64.unpack(self.take(8))[0])

    def string(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise DecodeError("unterminated string")
        text = self.data[self.pos : end].decode()
        self.pos = end + 1
        return text

    def tuple(self) -> Tuple:
        values: list[str | None | object] = []
        for _ in range(self.int16()):
            kind = self.byte()
            if kind == "n":
                values.append(None)
            elif kind == "u":
                values.append(UNCHANGED)
            elif kind == "t":
                values.append(self.take(self.int32()).decode())
            else:  # 'b' binary is only sent when asked for ('binary' option)
                raise DecodeError(f"unknown tuple value kind {kind!r}")
        return tuple(values)


def decode(data: bytes) -> Decoded:
    """One pgoutput message; None for those capture has no use for (Type)."""
    reader = _Reader(bytes(data))
    kind = reader.byte()
    if kind == "B":
        return Begin(final_lsn=reader.uint64(), commit_time=reader.int64(), xid=reader.uint32())
    if kind == "C":
        reader.int8()  # flags, unused
        return Commit(
            commit_lsn=reader.uint64(), end_lsn=reader.uint64(), commit_time=reader.int64()
        )
    if kind == "R":
        oid, namespace, name = reader.uint32(), reader.string(), reader.string()
        identity = reader.byte()
        columns = []
        for _ in range(reader.int16()):
            flags = reader.int8()
            column_name = reader.string()
            type_oid = reader.uint32()
            reader.int32()  # type modifier
            columns.append(Column(column_name, type_oid, bool(flags & 1)))
        return Relation(oid, namespace, name, identity, tuple(columns))
    if kind == "I":
        oid = reader.uint32()
        if reader.byte() != "N":
            raise DecodeError("insert without a new tuple")
        return Change("insert", oid, new=reader.tuple())
    if kind == "U":
        oid = reader.uint32()
        marker = reader.byte()
        old = None
        if marker in ("K", "O"):
            old = reader.tuple()
            marker_is_key = marker == "K"
            marker = reader.byte()
        else:
            marker_is_key = False
        if marker != "N":
            raise DecodeError("update without a new tuple")
        return Change("update", oid, new=reader.tuple(), old=old, old_is_key=marker_is_key)
    if kind == "D":
        oid = reader.uint32()
        marker = reader.byte()
        if marker not in ("K", "O"):
            raise DecodeError("delete without an old key")
        return Change("delete", oid, old=reader.tuple(), old_is_key=marker == "K")
    if kind == "T":
        count = reader.int32()
        reader.int8()  # options: CASCADE, RESTART IDENTITY
        return Truncate(tuple(reader.uint32() for _ in range(count)))
    if kind == "M":
        transactional = bool(reader.int8() & 1)
        reader.uint64()  # the message's LSN
        prefix = reader.string()
        return Message(transactional, prefix, reader.take(reader.int32()))
    if kind == "O":
        reader.uint64()
        return Origin(reader.string())
    if kind == "Y":
        return None
    raise DecodeError(f"unknown pgoutput message {kind!r}")
