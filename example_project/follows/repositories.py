"""The follows service's own data interface, and its two stores.

``FollowRepository`` is what the service calls to follow, unfollow and list followers.
``SqlFollowRepository`` keeps follows where they are today (the ``Follow`` table, through
the ORM); ``DynamoFollowRepository`` is where they are moving, remodelled: one DynamoDB
item per channel holding its followers. django-mirror records the interface's write calls,
replays them on the DynamoDB store, mirrors them live and compares the reads
(``DJANGO_MIRROR["REPOSITORIES"]`` in ``twitch/settings.py``; see docs/repositories.md).
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from django.conf import settings
from django.db import router, transaction
from django.db.models import F

from django_mirror.repositories import current_event_id, passthrough, read, repository, write
from follows.models import Channel, Follow


class AlreadyFollowing(Exception):
    """The user follows the channel already: an answer of the store, not a failure, so
    it is recorded and mirrored like a result (each store must give it too)."""


@repository
class FollowRepository(Protocol):
    """Who follows which channel. Every store orders a channel's writes, so calls are
    partitioned by channel: one channel's calls replay in the order they were made."""

    @write(partition_key="channel_id", tolerate=(AlreadyFollowing,))
    def follow(self, user_id: int, channel_id: int, *, notifications: bool = True) -> bool:
        """Make the follow; True once made. Raises AlreadyFollowing if it exists."""
        ...

    @write(partition_key="channel_id")
    def unfollow(self, user_id: int, channel_id: int) -> bool:
        """Remove the follow; False when there was none."""
        ...

    @read(preprocess=sorted)
    def followers(self, channel_id: int, limit: int = 100) -> list[int]:
        """The ids of the channel's followers: the ``limit`` lowest."""
        ...

    @read
    def follower_count(self, channel_id: int) -> int: ...

    @passthrough
    def is_following(self, user_id: int, channel_id: int) -> bool:
        """Asked on every channel page: answered by the source alone, never shadowed."""
        ...

    @passthrough
    def describe(self) -> str: ...


class SqlFollowRepository:
    """Follows in the ``Follow`` table, written as ``follows.services`` writes them: the
    channel's counter moves in the same transaction as the row."""

    def follow(self, user_id: int, channel_id: int, *, notifications: bool = True) -> bool:
        with transaction.atomic(using=router.db_for_write(Follow)):
            self._lock_channel(channel_id)
            _, created = Follow.objects.get_or_create(
                user_id=user_id, channel_id=channel_id, defaults={"notifications": notifications}
            )
            if not created:
                raise AlreadyFollowing(f"user {user_id} follows channel {channel_id}")
            Channel.objects.filter(pk=channel_id).update(follower_count=F("follower_count") + 1)
        return True

    def unfollow(self, user_id: int, channel_id: int) -> bool:
        with transaction.atomic(using=router.db_for_write(Follow)):
            self._lock_channel(channel_id)
            deleted, _ = Follow.objects.filter(user_id=user_id, channel_id=channel_id).delete()
            if deleted:
                Channel.objects.filter(pk=channel_id).update(follower_count=F("follower_count") - 1)
        return bool(deleted)

    def followers(self, channel_id: int, limit: int = 100) -> list[int]:
        return list(
            Follow.objects.filter(channel_id=channel_id)
            .order_by("user_id")
            .values_list("user_id", flat=True)[:limit]
        )

    def follower_count(self, channel_id: int) -> int:
        return Follow.objects.filter(channel_id=channel_id).count()

    def is_following(self, user_id: int, channel_id: int) -> bool:
        return Follow.objects.filter(user_id=user_id, channel_id=channel_id).exists()

    def describe(self) -> str:
        return f"SQL table {Follow._meta.db_table!r} on {router.db_for_write(Follow)!r}"

    @staticmethod
    def _lock_channel(channel_id: int) -> None:
        """Take the channel's row lock first, so the source orders every write of one
        channel (an unfollow that deletes nothing included) in commit order: the order
        its call events are recorded, and replayed, in."""
        list(Channel.objects.select_for_update().filter(pk=channel_id).values_list("pk"))


class DynamoFollowRepository:
    """Follows remodelled for DynamoDB: one item per channel, keyed by ``channel_id``.

    Item: ``channel_id`` (N), ``followers`` (a number set of user ids), ``muted`` (the
    followers with notifications off, a subset), ``follower_count`` (N) and
    ``last_event`` (the id of the last replayed call that changed the item). Writes are
    single ``UpdateItem`` calls (``ADD``/``DELETE`` on the sets, ``ADD`` on the count)
    under a condition, so a follow that exists raises ``AlreadyFollowing`` as the SQL
    store does, and concurrent writers never lose an update.

    Deduplication: in replay, ``current_event_id()`` names the call. A write whose id is
    the item's ``last_event`` is not applied again and answers as it did (True). That
    makes a redelivery of a channel's latest call harmless (Kinesis delivering a record
    twice, replay restarting after it applied a record but before its checkpoint); it
    does not make replaying older calls again harmless: rebuild the table before
    ``mirror_replay --from-start``.

    Options (keyword arguments, else ``settings.FOLLOW_REPOSITORY_DYNAMODB``):
    ``table_name``, ``region_name``, ``endpoint_url`` (None: AWS).
    """

    def __init__(self, **options: Any) -> None:
        options = {**getattr(settings, "FOLLOW_REPOSITORY_DYNAMODB", {}), **options}
        self.table_name: str = options.get("table_name", "twitch-follows-by-channel")
        self.client = boto3.session.Session().client(
            "dynamodb",
            region_name=options.get("region_name", "us-east-1"),
            endpoint_url=options.get("endpoint_url"),
            config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        )
        self._ready = False
        self._lock = threading.Lock()

    # --- the interface ----------------------------------------------------------------------

    def follow(self, user_id: int, channel_id: int, *, notifications: bool = True) -> bool:
        adds = "followers :user, follower_count :one" + ("" if notifications else ", muted :user")
        if self._update(channel_id, user_id, f"ADD {adds}", "NOT contains(followers, :id)"):
            return True
        raise AlreadyFollowing(f"user {user_id} follows channel {channel_id}")

    def unfollow(self, user_id: int, channel_id: int) -> bool:
        return self._update(
            channel_id,
            user_id,
            "DELETE followers :user, muted :user ADD follower_count :minus_one",
            "contains(followers, :id)",
        )

    def followers(self, channel_id: int, limit: int = 100) -> list[int]:
        item = self._get(channel_id, "followers")
        return sorted(int(n) for n in item.get("followers", {}).get("NS", []))[:limit]

    def follower_count(self, channel_id: int) -> int:
        item = self._get(channel_id, "follower_count")
        return int(item.get("follower_count", {}).get("N", 0))

    def is_following(self, user_id: int, channel_id: int) -> bool:
        return str(user_id) in self._get(channel_id, "followers").get("followers", {}).get("NS", [])

    def describe(self) -> str:
        return f"DynamoDB table {self.table_name!r}, one item per channel"

    # --- beside the interface: set-up, bulk copy, read-back ---------------------------------

    def setup(self) -> bool:
        """Create the table if missing (on-demand billing); True when it was created."""
        with self._lock:
            if self._ready:
                return False
            try:
                self.client.describe_table(TableName=self.table_name)
                created = False
            except self.client.exceptions.ResourceNotFoundException:
                self.client.create_table(
                    TableName=self.table_name,
                    AttributeDefinitions=[{"AttributeName": "channel_id", "AttributeType": "N"}],
                    KeySchema=[{"AttributeName": "channel_id", "KeyType": "HASH"}],
                    BillingMode="PAY_PER_REQUEST",
                )
                self.client.get_waiter("table_exists").wait(TableName=self.table_name)
                created = True
            self._ready = True
            return created

    def copy(self, follows: dict[int, dict[int, bool]]) -> int:
        """Load ``{channel_id: {user_id: notifications}}`` (the follows that existed before
        capture), each channel only where the table has no item for it yet, so a channel
        that replay already wrote is never overwritten. Returns the channels copied."""
        self.setup()
        copied = 0
        for channel_id, users in follows.items():
            item: dict[str, Any] = {
                "channel_id": {"N": str(channel_id)},
                "follower_count": {"N": str(len(users))},
            }
            if users:  # DynamoDB has no empty sets
                item["followers"] = {"NS": [str(u) for u in users]}
            muted = [str(u) for u, notifications in users.items() if not notifications]
            if muted:
                item["muted"] = {"NS": muted}
            try:
                self.client.put_item(
                    TableName=self.table_name,
                    Item=item,
                    ConditionExpression="attribute_not_exists(channel_id)",
                )
                copied += 1
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise
        return copied

    def snapshot(self) -> dict[int, tuple[dict[int, bool], int]]:
        """Every channel's ``({user_id: notifications}, follower_count)``: a consistent scan,
        for comparing with the source."""
        self.setup()
        found: dict[int, tuple[dict[int, bool], int]] = {}
        request: dict[str, Any] = {"TableName": self.table_name, "ConsistentRead": True}
        while True:
            page = self.client.scan(**request)
            for item in page.get("Items", []):
                muted = set(item.get("muted", {}).get("NS", []))
                users = {int(u): u not in muted for u in item.get("followers", {}).get("NS", [])}
                found[int(item["channel_id"]["N"])] = (users, int(item["follower_count"]["N"]))
            if "LastEvaluatedKey" not in page:
                return found
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    # --- DynamoDB calls ---------------------------------------------------------------------

    def _update(self, channel_id: int, user_id: int, expression: str, condition: str) -> bool:
        """One conditional ``UpdateItem``; False when the condition failed (the follow
        exists, or does not), True when applied or already applied by this replayed call."""
        self.setup()
        event_id = current_event_id()
        values: dict[str, Any] = {
            ":user": {"NS": [str(user_id)]},
            ":id": {"N": str(user_id)},
            ":one": {"N": "1"},
            ":minus_one": {"N": "-1"},
        }
        if event_id is not None:
            expression += " SET last_event = :event"
            condition = (
                f"({condition}) AND (attribute_not_exists(last_event) OR last_event <> :event)"
            )
            values[":event"] = {"S": event_id}
        used = {name: value for name, value in values.items() if name in expression + condition}
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key={"channel_id": {"N": str(channel_id)}},
                UpdateExpression=expression,
                ConditionExpression=condition,
                ExpressionAttributeValues=used,
            )
            return True
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
        return (
            event_id is not None
            and self._get(channel_id, "last_event").get("last_event", {}).get("S") == event_id
        )

    def _get(self, channel_id: int, attribute: str) -> dict[str, Any]:
        self.setup()
        response = self.client.get_item(
            TableName=self.table_name,
            Key={"channel_id": {"N": str(channel_id)}},
            ConsistentRead=True,
            ProjectionExpression=attribute,
        )
        return response.get("Item", {})  # type: ignore[no-any-return]
