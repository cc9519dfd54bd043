"""Amazon Kinesis Data Streams through boto3 (or moto/localstack at ``endpoint_url``)."""

from __future__ import annotations

import datetime as dt
import logging
import math
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from django_mirror.core.aws import AwsClient
from django_mirror.streams.aggregation import CorruptAggregate, deaggregate, is_aggregated
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
from django_mirror.streams.routing import Entry, ShardMap, pack, plain

logger = logging.getLogger("django_mirror.streams")

#: PutRecords limits: records and bytes (data plus partition keys) per request.
MAX_PUT_RECORDS = 500
MAX_PUT_BYTES = 5 * 1024 * 1024
#: The most an aggregated record's data may hold: a record (data and partition key, of
#: up to 256 characters) is at most 1 MiB.
MAX_AGGREGATE_BYTES = 1024 * 1024 - 1024
#: The default: under the limit, with room to spare.
AGGREGATE_BYTES = 1_000_000
#: The least ``aggregate_max_bytes`` the check accepts: room for a few events at least.
MIN_AGGREGATE_BYTES = 1024
RETRYABLE_CODES = {
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "LimitExceededException",
    "InternalFailure",
    "ServiceUnavailable",
    "KMSThrottlingException",
}


#: The stream (or a shard) is missing: retrying cannot help.
NOT_FOUND = "ResourceNotFoundException"
#: Reads of a shard that may answer empty before its first record (Kinesis skips
#: empty stretches of a shard one response at a time).
EMPTY_READS = 10


class KinesisStream(Stream):
    """A Kinesis stream; ``put`` retries throttling and partial failures with jittered
    backoff. With ``aggregate``, ``put`` packs the records bound for one shard into
    KPL-aggregated records (``aggregation``) and ``read`` unpacks them; records that are
    not aggregated are read as they are, whichever the setting."""

    def __init__(
        self,
        stream_name: str,
        region_name: str = "us-east-1",
        endpoint_url: str | None = None,
        shard_count: int = 1,
        aggregate: bool = True,
        aggregate_max_bytes: int = AGGREGATE_BYTES,
        **client_options: Any,
    ) -> None:
        """``client_options``: retries, backoff and timeouts, as ``AwsClient`` takes them."""
        self.name = stream_name
        self.region_name = region_name
        self.endpoint_url = endpoint_url
        self.shard_count = shard_count
        self.aggregate = aggregate
        self.aggregate_max_bytes = min(aggregate_max_bytes, MAX_AGGREGATE_BYTES)
        self.aws = AwsClient("kinesis", region_name, endpoint_url, **client_options)
        self.max_attempts = self.aws.max_attempts
        self._shard_map: ShardMap | None = None
        #: Per shard, events per stream record in its last read: a read's ``limit``
        #: counts events, ``GetRecords``'s counts stream records.
        self._events_per_record: dict[str, float] = {}

    @property
    def client(self) -> Any:
        """The boto3 client (created once; boto3 clients are thread-safe)."""
        return self.aws.client

    def _sleep(self, attempt: int) -> None:
        self.aws.sleep(attempt)

    def create(self) -> bool:
        try:
            self.client.describe_stream_summary(StreamName=self.name)
            return False
        except self.client.exceptions.ResourceNotFoundException:
            pass
        try:
            self.client.create_stream(StreamName=self.name, ShardCount=self.shard_count)
        except self.client.exceptions.ResourceInUseException:
            return False
        self.client.get_waiter("stream_exists").wait(
            StreamName=self.name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 300}
        )
        return True

    @staticmethod
    def _requests(entries: list[Entry]) -> list[list[Entry]]:
        """Split entries into PutRecords calls within the count and size limits."""
        calls: list[list[Entry]] = []
        current: list[Entry] = []
        size = 0
        for entry in entries:
            if current and (len(current) == MAX_PUT_RECORDS or size + entry.size > MAX_PUT_BYTES):
                calls.append(current)
                current, size = [], 0
            current.append(entry)
            size += entry.size
        if current:
            calls.append(current)
        return calls

    def shard_map(self, refresh: bool = False) -> ShardMap:
        """The shards' hash ranges, listed again when ``refresh``, or when old."""
        if refresh or self._shard_map is None or self._shard_map.stale:
            self._shard_map = ShardMap(self.shards())
        return self._shard_map

    def _entries(self, records: list[Record], indexes: list[int]) -> list[Entry]:
        if not self.aggregate:
            return plain(records, indexes)
        return pack(records, indexes, self.shard_map(), self.aggregate_max_bytes)

    def put(self, records: list[Record]) -> list[int]:
        """Throttled records and requests are retried; what is still refused after the
        last attempt is returned. A request that can never succeed (a missing stream, a
        refused call), or a stream still unreachable at the last attempt, raises
        ``StreamError`` instead, naming why. Records an aggregate took to a shard that
        is not theirs (the stream was resharded since the map was read) are put again
        at once, on their own shard; replay skips their first copy."""
        pending = list(range(len(records)))
        for attempt in range(self.max_attempts):
            failed: list[int] = []
            throttled = False
            unreachable: BotoCoreError | None = None
            for call in self._requests(self._entries(records, pending)):
                try:
                    refused, misplaced = self._put_once(call)
                except BotoCoreError as exc:
                    refused, misplaced = [i for entry in call for i in entry.members], []
                    unreachable = exc
                throttled = throttled or bool(refused)
                failed.extend(refused + misplaced)
            if not failed:
                return []
            if unreachable is not None and attempt + 1 == self.max_attempts:
                raise StreamError(f"kinesis put_records: {unreachable}") from unreachable
            logger.info(
                "kinesis: %d of %d records not accepted, retrying", len(failed), len(pending)
            )
            pending = sorted(failed)  # a row's events keep their order
            if throttled and attempt + 1 < self.max_attempts:
                self._sleep(attempt)
        return pending

    def _put_once(self, call: list[Entry]) -> tuple[list[int], list[int]]:
        """One PutRecords request; the record indexes it did not deliver (throttled), and
        those an aggregate delivered to a shard not theirs."""
        try:
            response = self.client.put_records(
                StreamName=self.name, Records=[entry.request() for entry in call]
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == NOT_FOUND:
                raise StreamNotFound(self.name) from exc
            if code not in RETRYABLE_CODES:
                raise StreamError(f"kinesis put_records: {exc}") from exc
            return [i for entry in call for i in entry.members], []
        refused: list[int] = []
        misplaced: list[int] = []
        for entry, result in zip(call, response["Records"], strict=True):
            if result.get("ErrorCode"):
                refused.extend(entry.members)
            elif entry.shard_id is not None and result.get("ShardId", entry.shard_id) != (
                entry.shard_id
            ):
                misplaced.extend(self._misplaced(entry, result["ShardId"]))
        return refused, misplaced

    def _misplaced(self, entry: Entry, landed: str) -> list[int]:
        """The records of an aggregate that landed on ``landed``, not on the shard the map
        gave, whose hash keys are not that shard's. The map is read again once: after
        that, it gives ``landed`` for the aggregate's hash key."""
        shards = self.shard_map()
        if shards.shard_for(entry.hashes[0]) != landed:
            shards = self.shard_map(refresh=True)
        return [
            i
            for i, hashed in zip(entry.members, entry.hashes, strict=True)
            if not shards.covers(landed, hashed)
        ]

    def _call(self, method: str, **kwargs: Any) -> Any:
        """A read-side call, retried on throttling and connection errors."""
        for attempt in range(self.max_attempts):
            try:
                return getattr(self.client, method)(**kwargs)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code == "ExpiredIteratorException":
                    raise PositionExpired(str(exc)) from exc
                if code == NOT_FOUND and method in ("list_shards", "describe_stream_summary"):
                    raise StreamNotFound(self.name) from exc  # not a trimmed shard
                if code == "InvalidArgumentException" and method == "get_shard_iterator":
                    raise PositionInvalid(str(exc)) from exc
                if code not in RETRYABLE_CODES or attempt + 1 == self.max_attempts:
                    raise StreamError(f"kinesis {method}: {exc}") from exc
            except BotoCoreError as exc:
                if attempt + 1 == self.max_attempts:
                    raise StreamError(f"kinesis {method}: {exc}") from exc
            self._sleep(attempt)
        raise StreamError(f"kinesis {method}: no attempts")  # pragma: no cover

    def shards(self) -> list[Shard]:
        shards: list[Shard] = []
        kwargs: dict[str, Any] = {"StreamName": self.name}
        while True:
            response = self._call("list_shards", **kwargs)
            for shard in response["Shards"]:
                parents = tuple(
                    p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p
                )
                closed = "EndingSequenceNumber" in shard.get("SequenceNumberRange", {})
                span = shard.get("HashKeyRange", {})
                hash_range = (
                    (int(span["StartingHashKey"]), int(span["EndingHashKey"]))
                    if "StartingHashKey" in span and "EndingHashKey" in span
                    else None
                )
                shards.append(Shard(shard["ShardId"], parents, closed, hash_range))
            token = response.get("NextToken")
            if not token:
                return shards
            kwargs = {"NextToken": token}

    def position(self, shard_id: str, after_sequence: str | None) -> str:
        kwargs: dict[str, Any] = {"StreamName": self.name, "ShardId": shard_id}
        if after_sequence:
            kwargs.update(
                ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=after_sequence
            )
        else:
            kwargs["ShardIteratorType"] = "TRIM_HORIZON"
        return self._call("get_shard_iterator", **kwargs)["ShardIterator"]

    def read(self, shard_id: str, position: str, limit: int) -> Batch:
        """About ``limit`` events, in whole stream records: aggregated ones unpacked, and
        those that do not hold what their MD5 or protobuf says rejected."""
        per_record = self._events_per_record.get(shard_id)
        if per_record is None:
            # Unknown yet: an aggregated record may hold thousands of events, so the first
            # read of an aggregated stream takes one record, not ``limit`` of them.
            per_record = float(limit) if self.aggregate else 1.0
        asked = max(1, min(math.ceil(limit / per_record), 10_000))
        response = self._call("get_records", ShardIterator=position, Limit=asked)
        batch = Batch(
            records=[],
            next_position=response.get("NextShardIterator"),
            millis_behind=int(response.get("MillisBehindLatest") or 0),
        )
        span: tuple[int, int] | None = None
        for record in response["Records"]:
            sequence, data = record["SequenceNumber"], record["Data"]
            batch.sequences.append(sequence)
            if not is_aggregated(data):
                batch.records.append((sequence, data))
                continue
            try:
                events = deaggregate(data)
            except CorruptAggregate as exc:
                batch.rejected.append((sequence, data, f"corrupt aggregated record: {exc}"))
                continue
            low, high = span = span or self._hash_range(shard_id)
            batch.records.extend(
                (sequence, event.data) for event in events if low <= event.hash_key <= high
            )
        if batch.sequences:
            self._events_per_record[shard_id] = max(1.0, len(batch.records) / len(batch.sequences))
        return batch

    def _hash_range(self, shard_id: str) -> tuple[int, int]:
        """The hash keys whose aggregated events are read from the shard. An event outside
        them was put there by an aggregate sent with a stale shard map, and put again on
        its own shard (``put``): that copy is the one read, in its row's order. All hash
        keys when the shard's range cannot be known."""
        shards = self.shard_map()
        if shard_id not in shards.ranges:
            shards = self.shard_map(refresh=True)
        return shards.ranges.get(shard_id) or (0, 2**128 - 1)

    def identity(self) -> str:
        """The ARN and creation time: a stream created again under the same name keeps
        its ARN but not its creation time."""
        summary = self._call("describe_stream_summary", StreamName=self.name)[
            "StreamDescriptionSummary"
        ]
        created = summary["StreamCreationTimestamp"].astimezone(dt.UTC)
        return f"{summary['StreamARN']} created {created.isoformat(timespec='milliseconds')}"

    def holds(self, shard_id: str, sequence: str) -> bool:
        """Read from the record at ``sequence``: Kinesis refuses a number from another
        stream, and starts at its oldest retained record when that one expired."""
        try:
            position: str | None = self._call(
                "get_shard_iterator",
                StreamName=self.name,
                ShardId=shard_id,
                ShardIteratorType="AT_SEQUENCE_NUMBER",
                StartingSequenceNumber=sequence,
            )["ShardIterator"]
        except PositionInvalid:
            return False
        for _ in range(EMPTY_READS):
            if position is None:
                break
            batch = self.read(shard_id, position, 1)
            if batch.sequences:  # at-least-once delivery: look among all, not the first only
                return sequence in batch.sequences
            if batch.millis_behind == 0:
                break
            position = batch.next_position
        return False
