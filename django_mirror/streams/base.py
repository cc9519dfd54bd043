"""The stream interface relay and replay are written against."""

from __future__ import annotations

from dataclasses import dataclass, field


class StreamError(RuntimeError):
    """The stream could not be reached or refused a request after retries."""


class StreamNotFound(StreamError):
    """The stream does not exist: no retry can help until it is created."""

    def __init__(self, name: str) -> None:
        super().__init__(f"stream {name!r} does not exist: run `manage.py mirror_setup`")


class PositionExpired(StreamError):
    """A read position is too old to use; ask for a new one from the checkpoint."""


class PositionInvalid(StreamError):
    """The stream refused a sequence number: it never came from this shard."""


@dataclass(frozen=True)
class Record:
    """One event on its way to the stream."""

    partition_key: str
    data: bytes


@dataclass(frozen=True)
class Shard:
    shard_id: str
    parents: tuple[str, ...] = ()
    closed: bool = False
    #: First and last hash key the shard takes (None when the backend has no such thing).
    hash_range: tuple[int, int] | None = None


@dataclass
class Batch:
    """What one read of a shard returned.

    ``records`` are the events, each with the sequence number of the stream record that
    carried it: the events of one aggregated record share it. A read returns whole
    stream records, so a checkpoint at ``last_sequence``, taken once the batch is
    applied, never passes over an event that was not; a process that stops mid-batch
    applies the batch's records again, which versions make harmless.
    """

    records: list[tuple[str, bytes]]  # (sequence number, data)
    next_position: str | None  # None once a closed shard has been read to its end
    millis_behind: int
    #: Every stream record read, in order, also those that held no event to apply.
    sequences: list[str] = field(default_factory=list)
    #: Stream records that cannot be read at all: (sequence number, data, reason).
    rejected: list[tuple[str, bytes, str]] = field(default_factory=list)

    @property
    def last_sequence(self) -> str | None:
        """The sequence number a checkpoint after this batch names (None: read nothing)."""
        sequences = self.sequences or [sequence for sequence, _ in self.records]
        return max(sequences, key=int) if sequences else None


class Stream:
    """A partitioned, ordered-per-key, replayable log (Kinesis, or your own).

    ``put`` returns the indexes of the records it could not deliver after its own
    retries; the caller keeps those and tries again later.
    """

    name: str = ""
    #: Largest record the stream accepts.
    max_record_bytes: int = 1024 * 1024

    def create(self) -> bool:
        """Create the stream if missing; True when it was created."""
        raise NotImplementedError

    def put(self, records: list[Record]) -> list[int]:
        raise NotImplementedError

    def shards(self) -> list[Shard]:
        raise NotImplementedError

    def position(self, shard_id: str, after_sequence: str | None) -> str:
        """An opaque read position just after ``after_sequence`` (or at the oldest record)."""
        raise NotImplementedError

    def read(self, shard_id: str, position: str, limit: int) -> Batch:
        raise NotImplementedError

    def identity(self) -> str:
        """Which incarnation of the stream this is (a stream deleted and created again
        under the same name is another one); "" when the backend cannot tell."""
        return ""

    def holds(self, shard_id: str, sequence: str) -> bool:
        """Whether the shard still holds the record at ``sequence``: False once retention
        dropped it, or when it never came from this shard. True when the backend cannot
        tell."""
        return True
