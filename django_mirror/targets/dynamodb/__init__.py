"""DynamoDB as target: ``items`` turns rows into DynamoDB items and back within its
limits; ``target`` reads and writes them with retries, versions and tombstones."""

from __future__ import annotations

from django_mirror.targets.dynamodb.items import (
    MAX_ITEM_BYTES,
    ItemRefused,
    ItemTooLarge,
    from_attribute,
    item_size,
    json_attribute,
    json_value,
    to_attribute,
)
from django_mirror.targets.dynamodb.target import DynamoDBTarget

__all__ = [
    "MAX_ITEM_BYTES",
    "DynamoDBTarget",
    "ItemRefused",
    "ItemTooLarge",
    "from_attribute",
    "item_size",
    "json_attribute",
    "json_value",
    "to_attribute",
]
