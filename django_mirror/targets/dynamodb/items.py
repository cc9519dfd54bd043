"""A row as a DynamoDB item and back, within DynamoDB's limits on items.

Types: ``None`` is NULL; ``bool`` BOOL; ``int``, ``Decimal`` (exact; read back at the
field's decimal places) and finite ``float`` are N; durations N (microseconds);
datetimes ISO-8601 in UTC, dates, times, UUIDs and text S; bytes B; JSON a map or
list. A value DynamoDB would refuse (and with it the whole batch) is refused here
first, so only its event is dead-lettered.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
import uuid
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal
from typing import Any

from django.db import models
from django.utils import timezone

from django_mirror.core.events import UPSERT, Event, decode_row

#: DynamoDB's limits.
MAX_ITEM_BYTES = 400 * 1024
#: Integers of up to 38 digits: N as they are.
MAX_EXACT_INT = 10**38
#: Significant digits and exponents (of the leading digit) DynamoDB's N holds.
MAX_DIGITS, MIN_EXPONENT, MAX_EXPONENT = 38, -130, 125
#: Levels of maps and lists an attribute may have (one for a flat map or list).
MAX_DEPTH = 32
#: Bytes of a partition key's value (UTF-8).
MAX_KEY_BYTES = 2048
#: Attributes django-mirror keeps beside the columns.
VERSION, DELETED, TTL = "_v", "_deleted", "_ttl"


class ItemRefused(ValueError):
    """An item DynamoDB would refuse (and with it the whole batch): its event goes to the
    dead-letter table with the reason, not to the table."""


class ItemTooLarge(ItemRefused):
    """An item over DynamoDB's 400 KB."""


#: Decimal arithmetic that never rounds the values read back here.
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)


def _number_text(value: Decimal | int | float) -> str | None:
    """The number's text where DynamoDB's N holds it exactly (38 significant digits, and
    1E-130 to 1E+126 in magnitude, or zero), else None."""
    if type(value) is int and -MAX_EXACT_INT < value < MAX_EXACT_INT:
        return str(value)  # the common case, and always within DynamoDB's range
    text = repr(value) if isinstance(value, float) else str(value)
    exact = Decimal(text)
    if not exact.is_finite():
        return None
    if not exact:
        return text
    # Counted as written: ``normalize()`` would round to 28 digits first.
    significant = len(bytes(exact.as_tuple().digits).strip(b"\0"))
    if significant <= MAX_DIGITS and MIN_EXPONENT <= exact.adjusted() <= MAX_EXPONENT:
        return text
    return None


def _number(value: Decimal | int | float) -> dict[str, str]:
    """N where DynamoDB can hold the number exactly, else its text (S), which the field
    reads back the same."""
    text = _number_text(value)
    if text is not None:
        return {"N": text}
    return {"S": repr(value) if isinstance(value, float) else str(value)}


def to_attribute(value: Any) -> dict[str, Any]:
    """A Python value of a model field as a DynamoDB attribute value."""
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | Decimal):
        return _number(value)
    if isinstance(value, float):
        return _number(value) if math.isfinite(value) else {"S": repr(value)}
    if isinstance(value, dt.datetime):
        if timezone.is_aware(value):
            value = value.astimezone(dt.UTC)
        return {"S": value.isoformat()}
    if isinstance(value, dt.date | dt.time | uuid.UUID):
        return {"S": value.isoformat() if not isinstance(value, uuid.UUID) else str(value)}
    if isinstance(value, dt.timedelta):
        return {"N": str(value // dt.timedelta(microseconds=1))}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"B": bytes(value)}
    if isinstance(value, str):
        return {"S": value}
    raise TypeError(f"no DynamoDB type for {type(value).__name__}")


def json_attribute(value: Any, depth: int = 1) -> dict[str, Any]:
    """A JSON document as a map or list, all the way down. A number N cannot hold exactly
    (``1e200``, ``2**130``, NaN) is its JSON text as B, a type JSON never has otherwise;
    a document nested deeper than DynamoDB allows is refused."""
    if isinstance(value, dict | list):
        if depth > MAX_DEPTH:
            raise ItemRefused(f"JSON nested deeper than DynamoDB's {MAX_DEPTH} levels")
        if isinstance(value, dict):
            return {"M": {str(k): json_attribute(v, depth + 1) for k, v in value.items()}}
        return {"L": [json_attribute(v, depth + 1) for v in value]}
    if type(value) is int or type(value) is float:
        text = _number_text(value)
        return {"N": text} if text is not None else {"B": json.dumps(value).encode()}
    return to_attribute(value)


def json_value(attribute: dict[str, Any]) -> Any:
    """A map or list attribute back as the JSON document ``json_attribute`` wrote."""
    ((kind, raw),) = attribute.items()
    if kind == "M":
        return {k: json_value(v) for k, v in raw.items()}
    if kind == "L":
        return [json_value(v) for v in raw]
    if kind == "N":
        return float(raw) if any(c in raw for c in ".eE") else int(raw)
    if kind == "B":
        return json.loads(bytes(raw))
    if kind == "NULL":
        return None
    return raw


def from_attribute(field: models.Field, attribute: dict[str, Any]) -> Any:
    """The attribute back as the field's Python value."""
    if isinstance(field, models.JSONField):
        return json_value(attribute)
    ((kind, raw),) = attribute.items()
    if kind == "NULL":
        return None
    if kind in ("BOOL", "B"):
        return bytes(raw) if kind == "B" else raw
    if isinstance(field, models.DecimalField):
        places = Decimal(10) ** -(field.decimal_places or 0)
        return Decimal(raw).quantize(places, context=_EXACT)
    if isinstance(field, models.FloatField):
        return float(raw)
    if isinstance(field, models.DurationField):
        return dt.timedelta(microseconds=int(raw))
    if isinstance(field, models.DateTimeField):
        return dt.datetime.fromisoformat(raw)
    if isinstance(field, models.DateField):
        return dt.date.fromisoformat(raw)
    if isinstance(field, models.TimeField):
        return dt.time.fromisoformat(raw)
    if kind == "N":
        return int(raw)
    return field.to_python(raw)


def partition_key(text: str) -> dict[str, str]:
    """The partition key's attribute; DynamoDB refuses an empty one or one over 2 KB."""
    if not text or len(text) * 4 > MAX_KEY_BYTES and len(text.encode()) > MAX_KEY_BYTES:
        raise ItemRefused(f"key of {len(text.encode())} bytes: DynamoDB takes 1 to 2048")
    return {"S": text}


#: One encoder for every item: ``json.dumps`` with ``default`` builds a new one a call.
_SIZE_ENCODER = json.JSONEncoder(default=lambda b: "x" * len(b))


def item_size(item: dict[str, Any]) -> int:
    """DynamoDB's measure of an item: attribute names plus values, near enough. The
    JSON is ASCII (``ensure_ascii``), so its length in characters is its length in bytes."""
    return len(_SIZE_ENCODER.encode(item))


def event_item(
    model: type[models.Model], event: Event, key_attribute: str, tombstone_ttl: float
) -> dict[str, Any]:
    """The item an event writes: the row with its version, or a tombstone that DynamoDB
    expires ``tombstone_ttl`` seconds from now."""
    if not -MAX_EXACT_INT < event.version < MAX_EXACT_INT:
        raise ItemRefused(f"version {event.version} has more than {MAX_DIGITS} digits")
    item: dict[str, Any] = {
        key_attribute: partition_key(event.key[1]),
        VERSION: {"N": str(event.version)},
    }
    if event.op != UPSERT:
        expires = int(time.time() + tombstone_ttl)
        item.update({DELETED: {"BOOL": True}, TTL: {"N": str(expires)}})
        return item
    values = decode_row(model, event.row or {})
    return with_columns(model, item, values)


def with_columns(
    model: type[models.Model], item: dict[str, Any], values: dict[str, Any]
) -> dict[str, Any]:
    """``item`` with the columns of ``values`` (``{attname: value}``) added; refused
    when DynamoDB would find it too large."""
    for field in model._meta.concrete_fields:
        if field.attname in values:
            value = values[field.attname]
            item[field.column] = (
                json_attribute(value)
                if isinstance(field, models.JSONField)
                else to_attribute(value)
            )
    size = item_size(item)
    if size > MAX_ITEM_BYTES:
        raise ItemTooLarge(f"item of about {size} bytes exceeds DynamoDB's 400 KB item limit")
    return item


def row_of(model: type[models.Model], item: dict[str, Any]) -> dict[str, Any] | None:
    """The row (``{attname: value}``) an item holds; None for a tombstone."""
    if DELETED in item:
        return None
    return {
        f.attname: from_attribute(f, item[f.column])
        for f in model._meta.concrete_fields
        if f.column in item
    }
