"""``DynamoDBTarget``: one DynamoDB table per model, items keyed by the row's primary key.

Each item carries the row's columns (typed as ``items.py`` says), its version ``_v``
and, for a delete, ``_deleted`` with a ``_ttl`` that lets DynamoDB expire the tombstone
once the stream can no longer replay anything older. Reads hide tombstones.

Replay reads the versions a batch touches (``BatchGetItem``) and writes only newer
events (``BatchWriteItem``, 25 items a call, unprocessed items retried). Versions
arrive in order per row (one row, one shard, one replay consumer); a live apply racing
a replay batch can leave a row at an older version for a moment, and the newer event
that follows it in the stream puts it right. Copy and live mirroring, which race
replay across rows, write one item at a time under a condition on ``_v`` instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from django.apps import apps
from django.db import models

from django_mirror.core.aws import AwsClient
from django_mirror.core.events import Event, EventDecodeError, pk_text
from django_mirror.targets.base import ApplyResult, CopyResult, Target, latest_per_row
from django_mirror.targets.dynamodb.items import (
    DELETED,
    TTL,
    VERSION,
    ItemRefused,
    event_item,
    partition_key,
    row_of,
    with_columns,
)

#: DynamoDB's limits on batches.
MAX_BATCH_WRITE = 25
MAX_BATCH_GET = 100
TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
RETRYABLE = {
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
}


class DynamoDBTarget(Target):
    """Mirror rows into DynamoDB, one table per model.

    ``table_name`` may use ``{app_label}`` and ``{model_name}``; ``key_attribute`` names
    the partition key (a string: the primary key's text). ``tombstone_ttl`` should
    exceed the stream's retention.
    """

    def __init__(
        self,
        table_name: str = "{app_label}_{model_name}",
        key_attribute: str = "pk",
        region_name: str = "us-east-1",
        endpoint_url: str | None = None,
        tombstone_ttl: float = 8 * 24 * 3600,
        threads: int = 8,
        **client_options: Any,
    ) -> None:
        self.table_name = table_name
        self.key = key_attribute
        self.tombstone_ttl = tombstone_ttl
        self.threads = threads
        self.aws = AwsClient(
            "dynamodb",
            region_name,
            endpoint_url,
            max_pool_connections=max(10, threads * 2),
            **client_options,
        )

    def describe(self) -> str:
        return f"DynamoDB table {self.table_name!r}"

    @property
    def client(self) -> Any:
        return self.aws.client

    def table(self, model: type[models.Model] | str) -> str:
        """The model's table name, checked against DynamoDB's naming rules."""
        opts = (apps.get_model(model) if isinstance(model, str) else model)._meta
        name = self.table_name.format(app_label=opts.app_label, model_name=opts.model_name)
        if not TABLE_NAME.match(name):
            raise ValueError(f"{name!r} is not a valid DynamoDB table name")
        return name

    # --- set-up ---------------------------------------------------------------------------

    def setup(self, models_: Sequence[type[models.Model]]) -> list[str]:
        """Create missing tables (on-demand billing) with TTL on the tombstones."""
        created = []
        for model in models_:
            name = self.table(model)
            try:
                self.client.describe_table(TableName=name)
                continue
            except self.client.exceptions.ResourceNotFoundException:
                pass
            self.client.create_table(
                TableName=name,
                AttributeDefinitions=[{"AttributeName": self.key, "AttributeType": "S"}],
                KeySchema=[{"AttributeName": self.key, "KeyType": "HASH"}],
                BillingMode="PAY_PER_REQUEST",
            )
            self.client.get_waiter("table_exists").wait(TableName=name)
            self.client.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL},
            )
            created.append(name)
        return created

    # --- calls with retries ---------------------------------------------------------------

    def _call(self, method: str, **kwargs: Any) -> Any:
        """A client call; throttling and transient faults are retried with backoff."""
        for attempt in range(self.aws.max_attempts - 1):
            try:
                return getattr(self.client, method)(**kwargs)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code", "") not in RETRYABLE:
                    raise
            except BotoCoreError:
                pass
            self.aws.sleep(attempt)
        return getattr(self.client, method)(**kwargs)

    def _batch_get(self, table: str, keys: Sequence[str], projection: bool) -> list[dict]:
        """Items by key, ``UnprocessedKeys`` asked again with backoff."""
        found: list[dict] = []
        for start in range(0, len(keys), MAX_BATCH_GET):
            request: dict[str, Any] = {
                "Keys": [
                    {self.key: {"S": k}} for k in dict.fromkeys(keys[start : start + MAX_BATCH_GET])
                ],
                "ConsistentRead": True,
            }
            if projection:
                request["ProjectionExpression"] = "#k, #v, #d"
                request["ExpressionAttributeNames"] = {"#k": self.key, "#v": VERSION, "#d": DELETED}
            pending = {table: request}
            attempt = 0
            while pending:
                response = self._call("batch_get_item", RequestItems=pending)
                found.extend(response.get("Responses", {}).get(table, []))
                pending = response.get("UnprocessedKeys") or {}
                if pending:
                    self.aws.sleep(attempt)
                    attempt += 1
        return found

    def _batch_write(self, table: str, items: list[dict[str, Any]]) -> None:
        """Put items 25 a call; what DynamoDB leaves unprocessed is sent again."""
        for start in range(0, len(items), MAX_BATCH_WRITE):
            pending = {
                table: [{"PutRequest": {"Item": i}} for i in items[start : start + MAX_BATCH_WRITE]]
            }
            attempt = 0
            while pending:
                response = self._call("batch_write_item", RequestItems=pending)
                pending = response.get("UnprocessedItems") or {}
                if pending:
                    if attempt + 1 >= self.aws.max_attempts * 4:
                        raise RuntimeError(f"DynamoDB left items of {table} unprocessed")
                    self.aws.sleep(min(attempt, 6))
                    attempt += 1

    def _put_if(self, table: str, item: dict[str, Any], newer: bool) -> bool:
        """One conditional put: only where the key is absent, or (``newer``) where the
        item held is older. False when the condition failed: the target knew better."""
        condition = "attribute_not_exists(#k)"
        extra: dict[str, Any] = {"ExpressionAttributeNames": {"#k": self.key}}
        if newer:
            condition += " OR #v < :v"
            extra["ExpressionAttributeNames"]["#v"] = VERSION
            extra["ExpressionAttributeValues"] = {":v": item[VERSION]}
        try:
            self._call(
                "put_item", TableName=table, Item=item, ConditionExpression=condition, **extra
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True

    # --- Target -----------------------------------------------------------------------------

    def versions(self, model_label: str, pks: Sequence[Any]) -> dict[str, tuple[int, bool]]:
        return self._versions(self.table(model_label), [pk_text(pk) for pk in pks])

    def _versions(self, table: str, keys: Sequence[str]) -> dict[str, tuple[int, bool]]:
        """``{key: (version, deleted)}`` of the items held under ``keys``."""
        return {
            item[self.key]["S"]: (int(item[VERSION]["N"]), DELETED in item)
            for item in self._batch_get(table, keys, projection=True)
            if VERSION in item
        }

    def apply(self, events: Sequence[Event]) -> ApplyResult:
        """Newest event per row, written only where it is newer than the item held.

        The versions held are read 100 keys a ``BatchGetItem`` by ``threads`` workers
        while this thread builds the items; the newer items go out 25 a
        ``BatchWriteItem`` on the same workers as soon as 25 are known, so the store
        always has requests to work on. A key occurs once in a batch, so its writes
        may go in any order; ``apply`` returns only when all are in, so the next
        batch's writes of a key come after this one's.
        """
        latest = latest_per_row(events)
        result = ApplyResult(stale=len(events) - len(latest))
        by_model: dict[str, list[Event]] = {}
        for event in latest:
            by_model.setdefault(event.model, []).append(event)
        with ThreadPoolExecutor(max_workers=max(1, self.threads)) as pool:
            reads: list[tuple[type[models.Model], str, list[Event], list[Future]]] = []
            for label, model_events in by_model.items():
                try:
                    model = apps.get_model(label)
                    table = self.table(model)
                except (LookupError, ValueError) as exc:
                    result.failed += [(e, str(exc)) for e in model_events]
                    continue
                keyed = self._keyed(model_events, result.failed)
                chunks = [keyed[i : i + MAX_BATCH_GET] for i in range(0, len(keyed), MAX_BATCH_GET)]
                futures = [
                    pool.submit(self._versions, table, [e.key[1] for e in c]) for c in chunks
                ]
                reads.append((model, table, keyed, futures))
            # Built while the reads are out; an event found stale wastes its item.
            built = [[self._event_item(model, e) for e in keyed] for model, _, keyed, _ in reads]
            writes: list[tuple[str, int, Future]] = []
            for (model, table, keyed, futures), items in zip(reads, built, strict=True):
                newer: list[dict[str, Any]] = []
                for start, read in zip(range(0, len(keyed), MAX_BATCH_GET), futures, strict=True):
                    held = read.result()
                    end = start + MAX_BATCH_GET
                    for event, item in zip(keyed[start:end], items[start:end], strict=True):
                        if held.get(event.key[1], (-1, False))[0] >= event.version:
                            result.stale += 1
                        elif isinstance(item, str):
                            result.failed.append((event, item))
                        else:
                            newer.append(item)
                    last = end >= len(keyed)
                    while len(newer) >= MAX_BATCH_WRITE or (last and newer):
                        part, newer = newer[:MAX_BATCH_WRITE], newer[MAX_BATCH_WRITE:]
                        write = pool.submit(self._batch_write, table, part)
                        writes.append((model._meta.label, len(part), write))
            for label, written, write in writes:
                write.result()
                result.count(label, written)
        return result

    @staticmethod
    def _keyed(events: list[Event], failed: list[tuple[Event, str]]) -> list[Event]:
        """The events whose key DynamoDB takes; the others join ``failed``, since one such
        key would fail the version read of its whole chunk."""
        keyed = []
        for event in events:
            try:
                partition_key(event.key[1])
            except ItemRefused as exc:
                failed.append((event, f"{type(exc).__name__}: {exc}"))
            else:
                keyed.append(event)
        return keyed

    def _event_item(self, model: type[models.Model], event: Event) -> dict[str, Any] | str:
        """The item ``event`` writes, or why DynamoDB would refuse it."""
        try:
            return event_item(model, event, self.key, self.tombstone_ttl)
        except (ItemRefused, EventDecodeError, TypeError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"

    def apply_live(self, events: Sequence[Event]) -> ApplyResult:
        """Each event in its own conditional put: for writers racing replay (live)."""
        latest = latest_per_row(events)
        result = ApplyResult(stale=len(events) - len(latest))
        for event in latest:
            model = apps.get_model(event.model)
            item = self._event_item(model, event)
            if isinstance(item, str):
                result.failed.append((event, item))
                continue
            if self._put_if(self.table(model), item, newer=True):
                result.count(model._meta.label, 1)
            else:
                result.stale += 1
        return result

    def copy(self, model: type[models.Model], rows: Sequence[dict[str, Any]]) -> CopyResult:
        """Insert-if-absent, one conditional put per row (in parallel): an item replay
        wrote, or a tombstone, is never overwritten."""
        table = self.table(model)
        pk = model._meta.pk
        result = CopyResult()

        def put(row: dict[str, Any]) -> bool | str:
            """Whether the row was put, or why DynamoDB would refuse it."""
            try:
                item = {self.key: partition_key(pk_text(row[pk.attname])), VERSION: {"N": "0"}}
                item = with_columns(model, item, row)
            except (ItemRefused, TypeError, ValueError) as exc:
                return f"{type(exc).__name__}: {exc}"
            return self._put_if(table, item, newer=False)

        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            for row, copied in zip(rows, pool.map(put, rows), strict=True):
                if isinstance(copied, str):
                    result.failed.append((row, copied))
                elif copied:
                    result.copied += 1
                else:
                    result.skipped += 1
        return result

    def fetch(self, model: type[models.Model], pks: Sequence[Any]) -> dict[str, dict[str, Any]]:
        items = self._batch_get(self.table(model), [pk_text(pk) for pk in pks], projection=False)
        rows = {item[self.key]["S"]: row_of(model, item) for item in items}
        return {key: row for key, row in rows.items() if row is not None}

    def scan(
        self, model: type[models.Model], segment: int = 0, segments: int = 1
    ) -> Iterator[dict[str, Any]]:
        """One of ``segments`` parallel Scan segments, consistent reads, tombstones hidden."""
        request: dict[str, Any] = {
            "TableName": self.table(model),
            "ConsistentRead": True,
            "Segment": segment,
            "TotalSegments": segments,
        }
        while True:
            page = self._call("scan", **request)
            for item in page.get("Items", []):
                row = row_of(model, item)
                if row is not None:
                    yield row
            if "LastEvaluatedKey" not in page:
                return
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
