"""Faults injected where the network would put them: botocore event hooks on the stream's
boto3 client, so relay and replay meet throttling, partial failures, expired iterators
and duplicated records exactly as they would from Kinesis, with none of our code patched.

Also the small helpers the robustness tests share: settings copies and a per-test stream.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import random
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from botocore.awsrequest import AWSResponse
from django.conf import settings
from django.test import override_settings

from django_mirror.core.events import Event
from django_mirror.streams import KinesisStream, get_stream
from django_mirror.streams.aggregation import deaggregate, is_aggregated

Handler = Callable[..., Any]
_ids = itertools.count()


# --- settings and streams ------------------------------------------------------------------


def mirror_settings(relay: dict[str, Any] | None = None, **stream_options: Any) -> dict[str, Any]:
    """A copy of the test ``DJANGO_MIRROR`` with some stream options (and RELAY keys) changed."""
    config = copy.deepcopy(settings.DJANGO_MIRROR)
    config["STREAM"]["OPTIONS"].update(stream_options)
    config["RELAY"] = {**config.get("RELAY", {}), **(relay or {})}
    return config


def unique_stream_name(prefix: str = "mirror-test") -> str:
    """Streams on the session-wide moto server outlive tests; each test takes its own."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextmanager
def configured_stream(relay: dict[str, Any] | None = None, **options: Any) -> Iterator[Any]:
    """Settings pointing at a stream with these options, the stream created, and the
    configured ``KinesisStream`` (the instance relay and replay will use) yielded."""
    with override_settings(DJANGO_MIRROR=mirror_settings(relay, **options)):
        stream = get_stream()
        stream.create()
        yield stream


def stream_records(stream: KinesisStream, raw: bool = False) -> dict[str, list[tuple[str, bytes]]]:
    """Every event the stream holds, per shard, in sequence order: an aggregated record's
    events each with the record's sequence number. With ``raw``, the Kinesis records as
    they are, an aggregated one as one."""
    client = stream.client
    result: dict[str, list[tuple[str, bytes]]] = {}
    for shard in client.list_shards(StreamName=stream.name)["Shards"]:
        shard_id = shard["ShardId"]
        iterator = client.get_shard_iterator(
            StreamName=stream.name, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        records: list[tuple[str, bytes]] = []
        while iterator:
            response = client.get_records(ShardIterator=iterator, Limit=10_000)
            for record in response["Records"]:
                sequence, data = record["SequenceNumber"], record["Data"]
                if raw or not is_aggregated(data):
                    records.append((sequence, data))
                else:
                    records.extend((sequence, event.data) for event in deaggregate(data))
            if not response["Records"]:
                break
            iterator = response.get("NextShardIterator")
        result[shard_id] = records
    return result


# --- hooking -------------------------------------------------------------------------------


@contextmanager
def hooked(client: Any, *hooks: tuple[str, Handler]) -> Iterator[None]:
    """Register ``(event name, handler)`` pairs on one client for the block."""
    registered = []
    for event, handler in hooks:
        unique_id = f"mirror-fault-{next(_ids)}"
        client.meta.events.register(event, handler, unique_id=unique_id)
        registered.append((event, unique_id))
    try:
        yield
    finally:
        for event, unique_id in registered:
            client.meta.events.unregister(event, unique_id=unique_id)


def error_response(code: str, message: str = "injected fault", status: int = 400) -> Any:
    """What a ``before-call`` handler returns to answer a call without sending it."""
    http = AWSResponse("https://kinesis.invalid/", status, {}, None)
    parsed = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": {}},
    }
    return http, parsed


def ok_response(parsed: dict[str, Any]) -> Any:
    http = AWSResponse("https://kinesis.invalid/", 200, {}, None)
    return http, {**parsed, "ResponseMetadata": {"HTTPStatusCode": 200, "HTTPHeaders": {}}}


def request_body(params: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of a Kinesis request as botocore is about to send it."""
    body = params["body"]
    return json.loads(body.decode() if isinstance(body, bytes) else body)


def put_request_records(params: dict[str, Any]) -> list[tuple[str, bytes]]:
    """``(partition key, data)`` of each record in a PutRecords request."""
    return [
        (r["PartitionKey"], base64.b64decode(r["Data"])) for r in request_body(params)["Records"]
    ]


# --- PutRecords ----------------------------------------------------------------------------


class PutLog:
    """Records what every PutRecords request carries (``before-call``)."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, bytes]]] = []
        self._lock = threading.Lock()

    def __call__(self, params: dict[str, Any], **kwargs: Any) -> None:
        with self._lock:
            self.calls.append(put_request_records(params))

    def hooks(self) -> list[tuple[str, Handler]]:
        return [("before-call.kinesis.PutRecords", self)]

    def sizes(self) -> list[int]:
        """Bytes per request the way Kinesis counts them: data plus partition keys."""
        return [sum(len(data) + len(key.encode()) for key, data in call) for call in self.calls]

    def data(self) -> list[bytes]:
        return [data for call in self.calls for _, data in call]


class FailCalls:
    """Answers the first ``times`` calls (None: every call) with an error, unsent."""

    def __init__(
        self, operation: str, code: str, times: int | None = None, message: str = "slow down"
    ) -> None:
        self.event = f"before-call.kinesis.{operation}"
        self.code = code
        self.times = times
        self.message = message
        self.failed = 0
        self._lock = threading.Lock()

    def __call__(self, **kwargs: Any) -> Any:
        with self._lock:
            if self.times is not None and self.failed >= self.times:
                return None
            self.failed += 1
        return error_response(self.code, self.message)

    def hooks(self) -> list[tuple[str, Handler]]:
        return [(self.event, self)]


class RejectRecords:
    """A partial PutRecords failure as Kinesis produces it: records chosen by ``predicate``
    are kept out of the request and reported back with an ``ErrorCode``; the rest go through.

    ``times`` limits how many requests are affected (None: all).
    """

    def __init__(
        self,
        predicate: Callable[[str, bytes], bool],
        times: int | None = 1,
        code: str = "ProvisionedThroughputExceededException",
    ) -> None:
        self.predicate = predicate
        self.times = times
        self.code = code
        self.rejected: list[bytes] = []
        self.affected = 0
        self._lock = threading.Lock()

    def _error(self) -> dict[str, str]:
        return {"ErrorCode": self.code, "ErrorMessage": "Rate exceeded for shard (injected)"}

    def before(self, params: dict[str, Any], context: dict[str, Any], **kwargs: Any) -> Any:
        body = request_body(params)
        records = body["Records"]
        chosen = [
            i
            for i, r in enumerate(records)
            if self.predicate(r["PartitionKey"], base64.b64decode(r["Data"]))
        ]
        with self._lock:
            if not chosen or (self.times is not None and self.affected >= self.times):
                return None
            self.affected += 1
            self.rejected.extend(base64.b64decode(records[i]["Data"]) for i in chosen)
        context["mirror_rejected"] = chosen
        kept = [r for i, r in enumerate(records) if i not in set(chosen)]
        if not kept:  # Kinesis refuses an empty request; answer for it
            return ok_response(
                {"FailedRecordCount": len(records), "Records": [self._error() for _ in records]}
            )
        body["Records"] = kept
        params["body"] = json.dumps(body).encode()
        return None

    def after(self, parsed: dict[str, Any], context: dict[str, Any], **kwargs: Any) -> None:
        chosen = context.get("mirror_rejected")
        if (
            not chosen
            or "Records" not in parsed
            or parsed.get("FailedRecordCount") == len(parsed["Records"])
        ):
            return
        results = iter(parsed["Records"])
        total = len(parsed["Records"]) + len(chosen)
        parsed["Records"] = [self._error() if i in chosen else next(results) for i in range(total)]
        parsed["FailedRecordCount"] = parsed.get("FailedRecordCount", 0) + len(chosen)

    def hooks(self) -> list[tuple[str, Handler]]:
        return [
            ("before-call.kinesis.PutRecords", self.before),
            ("after-call.kinesis.PutRecords", self.after),
        ]


# --- reading -------------------------------------------------------------------------------


class ShardReads:
    """Follows each read back to its shard: which shard every GetRecords call read, in order.

    It also ends a closed shard the way Kinesis does — once read to its end, GetRecords
    returns no ``NextShardIterator`` — which moto leaves out (it hands out iterators
    forever), so resharding can be replayed against moto at all.

    ``transforms`` run on each GetRecords response as ``transform(shard_id, parsed)``.
    """

    def __init__(self, *transforms: Callable[[str, dict[str, Any]], None]) -> None:
        self.transforms = transforms
        self.iterators: dict[str, str] = {}
        self.closed: set[str] = set()
        self.positioned: list[str] = []  # shard of every GetShardIterator, in order
        self.reads: list[tuple[str, int, bool]] = []  # (shard, records, ended)
        self._lock = threading.Lock()

    def _list_shards(self, parsed: dict[str, Any], **kwargs: Any) -> None:
        for shard in parsed.get("Shards", []):
            if "EndingSequenceNumber" in shard.get("SequenceNumberRange", {}):
                self.closed.add(shard["ShardId"])

    def _before_iterator(self, params: dict[str, Any], context: dict[str, Any], **kw: Any) -> None:
        context["mirror_shard"] = request_body(params)["ShardId"]

    def _after_iterator(self, parsed: dict[str, Any], context: dict[str, Any], **kw: Any) -> None:
        if "ShardIterator" in parsed:
            with self._lock:
                self.iterators[parsed["ShardIterator"]] = context["mirror_shard"]
                self.positioned.append(context["mirror_shard"])

    def _before_read(self, params: dict[str, Any], context: dict[str, Any], **kw: Any) -> None:
        context["mirror_shard"] = self.iterators.get(request_body(params)["ShardIterator"], "?")

    def _after_read(self, parsed: dict[str, Any], context: dict[str, Any], **kw: Any) -> None:
        if "Records" not in parsed:
            return
        shard = context["mirror_shard"]
        ended = shard in self.closed and not parsed["Records"]
        if ended:
            parsed.pop("NextShardIterator", None)
        count = len(parsed["Records"])
        for transform in self.transforms:
            transform(shard, parsed)
        with self._lock:
            if parsed.get("NextShardIterator"):
                self.iterators[parsed["NextShardIterator"]] = shard
            self.reads.append((shard, count, ended))

    def hooks(self) -> list[tuple[str, Handler]]:
        return [
            ("after-call.kinesis.ListShards", self._list_shards),
            ("before-call.kinesis.GetShardIterator", self._before_iterator),
            ("after-call.kinesis.GetShardIterator", self._after_iterator),
            ("before-call.kinesis.GetRecords", self._before_read),
            ("after-call.kinesis.GetRecords", self._after_read),
        ]

    def first_read(self, shard: str, with_records: bool = False) -> int:
        """Index of the first read of ``shard`` (optionally one that returned records)."""
        return next(
            i
            for i, (s, count, _) in enumerate(self.reads)
            if s == shard and (count or not with_records)
        )

    def end_read(self, shard: str) -> int:
        return next(i for i, (s, _, ended) in enumerate(self.reads) if s == shard and ended)


class DuplicateAndShuffle:
    """A ``ShardReads`` transform: each non-empty response gets some of its records twice,
    some records the shard delivered earlier once more, and comes back shuffled.

    At-least-once delivery in its worst form; replay's versions must make it harmless.
    """

    def __init__(self, seed: int = 0, rate: float = 0.3) -> None:
        self.rng = random.Random(seed)
        self.rate = rate
        self.seen: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.added = 0

    def __call__(self, shard: str, parsed: dict[str, Any]) -> None:
        records = list(parsed["Records"])
        if not records:  # an empty read says "caught up"; keep it empty
            return
        extra = [r for r in records if self.rng.random() < self.rate]
        history = self.seen[shard]
        if history:
            extra += self.rng.sample(history, min(len(history), max(1, len(records) // 3)))
        self.seen[shard].extend(records)
        mixed = records + extra
        self.rng.shuffle(mixed)
        self.added += len(extra)
        parsed["Records"] = mixed


class FailReadsAt:
    """Answers the GetRecords calls numbered in ``calls`` (1-based) with ``code``."""

    def __init__(self, calls: set[int], code: str = "ExpiredIteratorException") -> None:
        self.calls = calls
        self.code = code
        self.count = 0
        self.failed = 0
        self._lock = threading.Lock()

    def __call__(self, **kwargs: Any) -> Any:
        with self._lock:
            self.count += 1
            if self.count not in self.calls:
                return None
            self.failed += 1
        return error_response(self.code, "Iterator expired (injected)")

    def hooks(self) -> list[tuple[str, Handler]]:
        return [("before-call.kinesis.GetRecords", self)]


def shard_events(stream: KinesisStream) -> dict[str, list[Event]]:
    """Every event replay would read, per shard, in stream order."""
    result: dict[str, list[Event]] = {}
    for shard in stream.shards():
        position: str | None = stream.position(shard.shard_id, None)
        events: list[Event] = []
        while position:
            batch = stream.read(shard.shard_id, position, 10_000)
            events.extend(Event.from_json(data) for _, data in batch.records)
            if not batch.sequences:
                break
            position = batch.next_position
        result[shard.shard_id] = events
    return result
