"""Amazon Kinesis Data Streams through boto3 (or moto/localstack at ``endpoint_url``)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from django_mirror.core.aws import AwsClient
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

logger = logging.getLogger("django_mirror.streams")

#: PutRecords limits: records and bytes (data plus partition keys) per request.
MAX_PUT_RECORDS = 500
MAX_PUT_BYTES = 5 * 1024 * 1024
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
    """A Kinesis stream; ``put`` retries throttling and partial failures with jittered backoff."""

    def __init__(
        self,
        stream_name: str,
        region_name: str = "us-east-1",
        endpoint_url: str | None = None,
        shard_count: int = 1,
        **client_options: Any,
    ) -> None:
        """``client_options``: retries, backoff and timeouts, as ``AwsClient`` takes them."""
        self.name = stream_name
        self.region_name = region_name
        self.endpoint_url = endpoint_url
        self.shard_count = shard_count
        self.aws = AwsClient("kinesis", region_name, endpoint_url, **client_options)
        self.max_attempts = self.aws.max_attempts

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
    def _requests(records: list[Record], indexes: list[int]) -> list[list[int]]:
        """Split record indexes into PutRecords calls within the count and size limits."""
        calls: list[list[int]] = []
        current: list[int] = []
        size = 0
        for index in indexes:
            record = records[index]
            record_size = len(record.data) + len(record.partition_key.encode())
            if current and (len(current) == MAX_PUT_RECORDS or size + record_size > MAX_PUT_BYTES):
                calls.append(current)
                current, size = [], 0
            current.append(index)
            size += record_size
        if current:
            calls.append(current)
        return calls

    def put(self, records: list[Record]) -> list[int]:
        """Throttled records and requests are retried; what is still refused after the
        last attempt is returned. A request that can never succeed (a missing stream, a
        refused call), or a stream still unreachable at the last attempt, raises
        ``StreamError`` instead, naming why."""
        pending = list(range(len(records)))
        for attempt in range(self.max_attempts):
            failed: list[int] = []
            unreachable: BotoCoreError | None = None
            for call in self._requests(records, pending):
                try:
                    failed.extend(self._put_once(records, call))
                except BotoCoreError as exc:
                    failed.extend(call)
                    unreachable = exc
            if not failed:
                return []
            if unreachable is not None and attempt + 1 == self.max_attempts:
                raise StreamError(f"kinesis put_records: {unreachable}") from unreachable
            logger.info(
                "kinesis: %d of %d records not accepted, retrying", len(failed), len(pending)
            )
            pending = failed
            if attempt + 1 < self.max_attempts:
                self._sleep(attempt)
        return pending

    def _put_once(self, records: list[Record], call: list[int]) -> list[int]:
        """One PutRecords request; the indexes it did not deliver (throttled)."""
        try:
            response = self.client.put_records(
                StreamName=self.name,
                Records=[
                    {"Data": records[i].data, "PartitionKey": records[i].partition_key}
                    for i in call
                ],
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == NOT_FOUND:
                raise StreamNotFound(self.name) from exc
            if code not in RETRYABLE_CODES:
                raise StreamError(f"kinesis put_records: {exc}") from exc
            return call
        if not response.get("FailedRecordCount"):
            return []
        return [
            i
            for i, result in zip(call, response["Records"], strict=True)
            if result.get("ErrorCode")
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
                shards.append(Shard(shard["ShardId"], parents, closed))
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
        response = self._call("get_records", ShardIterator=position, Limit=min(limit, 10_000))
        return Batch(
            records=[(r["SequenceNumber"], r["Data"]) for r in response["Records"]],
            next_position=response.get("NextShardIterator"),
            millis_behind=int(response.get("MillisBehindLatest") or 0),
        )

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
            if batch.records:  # at-least-once delivery: look among all, not the first only
                return any(record[0] == sequence for record in batch.records)
            if batch.millis_behind == 0:
                break
            position = batch.next_position
        return False
