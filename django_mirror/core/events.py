"""The operation event: what one committed row write looks like on the stream.

Values that JSON cannot carry exactly are tagged (``{"$dec": "1.50"}``), so every
consumer — this app's replay, a DynamoDB loader, a data engineer's notebook —
decodes them without knowing the Django model. See ``docs/events.md``.

One module over 400 lines on purpose: the one format is written and read here, each tag's
encoding beside its decoding, so the round trip stays exact.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
import reprlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any, overload

import msgspec
from django.core.exceptions import ValidationError
from django.db import models

SCHEMA_VERSION = 1
UPSERT = "upsert"
DELETE = "delete"
#: A recorded call of a repository's write method (``django_mirror.repositories``).
CALL = "call"
OPS = (UPSERT, DELETE, CALL)
_OP_CODES = {"u": UPSERT, "d": DELETE, "c": CALL}

#: Events of one outbox row are numbered ``outbox_id * VERSION_STRIDE + position``, on
#: top of ``generation * GENERATION_STRIDE``: the model's count of run-time phase changes,
#: so versions keep growing when writes move from one store (and outbox) to the other.
VERSION_STRIDE = 100_000
GENERATION_STRIDE = 10**16


def _json_encoder() -> Callable[[Any], str]:
    """``json.dumps(value, separators=(",", ":"), ensure_ascii=False)``, without setting
    up an encoder on every call: the C encoder is made once, and reused.

    It skips the circular-reference check, which needs a fresh dict per call: values
    here come from databases and JSON, and a cycle ends in ``RecursionError`` instead.
    """
    plain = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
    if c_make_encoder is None:  # no C accelerator (PyPy): the pure-Python encoder
        return plain.encode
    made = c_make_encoder(
        None, plain.default, encode_basestring, None, ":", ",", False, False, True
    )

    def encode_json(value: Any) -> str:
        return "".join(made(value, 0))

    return encode_json


#: Compact JSON, as events and outbox payloads are written.
encode_json = _json_encoder()

_fast_decode = msgspec.json.Decoder().decode
_fast_encode = msgspec.json.Encoder().encode


def load_json(raw: bytes | str) -> tuple[Any, bool]:
    """The parsed JSON, and whether msgspec read it: it refuses NaN, infinities and lone
    surrogates, so what it read its encoder writes back exactly (integers of any size
    too). Anything else, and every error, is the stdlib's, as before."""
    try:
        return _fast_decode(raw), True
    except msgspec.DecodeError:
        return json.loads(raw), False


def dump_json(value: Any, exact: bool) -> bytes:
    """Compact JSON of a value ``load_json`` read: by msgspec when it read it (``exact``),
    else by the stdlib encoder, which also writes NaN and infinities."""
    return _fast_encode(value) if exact else encode_json(value).encode()


class EventDecodeError(ValueError):
    """A stream record is not a valid django-mirror event."""


#: Values quoted in decode errors: a bad value may be megabytes long, or nested deeper
#: than ``repr`` can go.
def _quoter() -> reprlib.Repr:
    """A short repr for error texts (attributes set one by one: Python 3.11's ``Repr``
    takes no keyword arguments)."""
    quoter = reprlib.Repr()
    quoter.maxlevel, quoter.maxstring, quoter.maxother = 3, 80, 80
    quoter.maxlist = quoter.maxdict = 5
    return quoter


quote_value = _quoter().repr

#: Why a value too deep for Python's recursion is refused (replay must not crash on it).
TOO_DEEP = "nested too deeply"


def encode_value(value: Any) -> Any:
    """One column value as JSON: native where exact, tagged otherwise."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return {"$float": repr(value)}
        return value
    if isinstance(value, Decimal):
        return {"$dec": str(value)}
    if isinstance(value, dt.datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, dt.date):
        return {"$date": value.isoformat()}
    if isinstance(value, dt.time):
        return {"$time": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {"$td": (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (list, tuple)):  # PostgreSQL ArrayField and the like
        return {"$list": [encode_value(item) for item in value]}
    raise TypeError(f"cannot encode {type(value).__name__} value in a mirror event")


_DECODERS: dict[str, Any] = {
    "$float": float,
    "$dec": Decimal,
    "$dt": dt.datetime.fromisoformat,
    "$date": dt.date.fromisoformat,
    "$time": dt.time.fromisoformat,
    "$td": lambda micros: dt.timedelta(microseconds=micros),
    "$uuid": uuid.UUID,
    "$b64": lambda text: base64.b64decode(text, validate=True),
    "$json": lambda value: value,
    "$list": lambda items: [decode_value(item) for item in items],
    "$field": lambda text: FieldText(text),
    "$prep": lambda raw: FieldValue(decode_value(raw)),
}


class FieldText(str):
    """A value only its field knows how to write as text, and to read back: the text of
    ``field.value_to_string()``, turned back into the value by ``field.to_python()`` —
    the round trip Django's serializers (``dumpdata``/``loaddata``) rely on. Custom
    fields whose values are objects, ``HStoreField``, range fields and arrays of those
    travel this way (``{"$field": text}``)."""

    __slots__ = ()


class FieldValue:
    """A value its field writes as a plain value (``get_prep_value()``) and reads back
    with ``to_python()``, for a field with no text form (``{"$prep": value}``)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FieldValue) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)

    def __str__(self) -> str:
        return str(self.value)

    def __repr__(self) -> str:
        return f"FieldValue({self.value!r})"


def decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) != 1:
            raise EventDecodeError(f"untagged object value {quote_value(value)}")
        ((tag, raw),) = value.items()
        try:
            return _DECODERS[tag](raw)
        except KeyError:
            raise EventDecodeError(f"unknown value tag {quote_value(tag)}") from None
        except EventDecodeError:
            raise
        except RecursionError:
            raise EventDecodeError(f"{tag} value {TOO_DEEP}") from None
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise EventDecodeError(f"bad {tag} value {quote_value(raw)}: {exc}") from None
    if isinstance(value, list):
        raise EventDecodeError(f"untagged list value {quote_value(value)}")
    return value


def encode_column(field_: models.Field, value: Any) -> Any:
    """One column's value. JSON field contents travel verbatim under ``$json`` (as the
    field's encoder writes them) so user keys never look like tags; an array's items
    each as its base field's value; a value no tag covers as its field's own text
    (:class:`FieldText`), or else its field's plain value (:class:`FieldValue`)."""
    if value is not None and isinstance(field_, models.JSONField):
        encoder = getattr(field_, "encoder", None)
        if encoder is not None:  # what the database holds: the encoder's JSON
            value = json.loads(json.dumps(value, cls=encoder))
        return {"$json": value}
    try:
        return encode_value(value)
    except TypeError:
        pass
    base = getattr(field_, "base_field", None)  # PostgreSQL's ArrayField
    if isinstance(base, models.Field) and isinstance(value, (list, tuple)):
        return {"$list": [encode_column(base, item) for item in value]}
    try:
        return {"$field": field_text(field_, value)}
    except TypeError:
        return {"$prep": encode_value(field_prep(field_, value))}


class _Holder:
    """Stands for a model instance holding one value, for ``Field.value_to_string``."""

    def __init__(self, attname: str, value: Any) -> None:
        setattr(self, attname, value)


def field_text(field_: models.Field, value: Any) -> str:
    """``value`` as its field's serialization text, checked to read back as the same
    text; TypeError when it does not (the field cannot carry its values this way)."""
    text = field_.value_to_string(_Holder(field_.attname, value))
    try:
        back = field_.value_to_string(_Holder(field_.attname, field_.to_python(text)))
    except (ValidationError, TypeError, ValueError, ArithmeticError):
        back = None
    if not isinstance(text, str) or back != text:
        raise TypeError(
            f"cannot encode {type(value).__name__} value of {field_} in a mirror event: "
            "its field does not read back its own value_to_string() text"
        )
    return text


def field_prep(field_: models.Field, value: Any) -> Any:
    """``value`` as its field's plain value, checked to read back as the same plain value;
    TypeError when it does not."""
    try:
        prep = field_.get_prep_value(value)
        back = field_.get_prep_value(field_.to_python(prep))
    except (ValidationError, TypeError, ValueError, ArithmeticError, AttributeError):
        back = prep = None
    if prep is None or back != prep:
        raise TypeError(f"cannot encode {type(value).__name__} value of {field_} in a mirror event")
    return prep


def decode_column(field_: models.Field, raw: Any) -> Any:
    """One column's Python value from its encoded form (the inverse of ``encode_column``)."""
    return _from_field(field_, decode_value(raw))


def _from_field(field_: models.Field, value: Any) -> Any:
    if isinstance(value, FieldText):
        return field_.to_python(value)
    if isinstance(value, FieldValue):
        return field_.to_python(value.value)
    base = getattr(field_, "base_field", None)
    if isinstance(base, models.Field) and isinstance(value, list):
        return [_from_field(base, item) for item in value]
    return value


class _RowKey:
    """``Event.key``: worked out on first use, then kept in the instance.

    As ``functools.cached_property`` does, without the lock it takes on every first use
    until Python 3.12, which costs replay more than the key itself does.
    """

    @overload
    def __get__(self, event: None, owner: type | None = None) -> _RowKey: ...
    @overload
    def __get__(self, event: Event, owner: type | None = None) -> tuple[str, str]: ...
    def __get__(self, event: Event | None, owner: type | None = None) -> Any:
        if event is None:
            return self
        key = event.__dict__["key"] = (event.model.lower(), pk_text(event.pk))
        return key


@dataclass
class Event:
    """One row write. ``row`` is the full after-image keyed by column (None for deletes)."""

    model: str
    op: str
    pk: Any
    version: int
    row: dict[str, Any] | None = None
    source: str = "default"
    tx: str = ""
    ts: str = ""
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    schema: int = SCHEMA_VERSION

    #: Identity of the row across stores: lower-cased label and the pk's text form.
    key = _RowKey()

    @property
    def partition_key(self) -> str:
        return partition_key(self.model, self.pk)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "id": self.id,
            "model": self.model,
            "op": self.op,
            "pk": encode_value(self.pk),
            "version": self.version,
            "source": self.source,
            "tx": self.tx,
            "ts": self.ts,
            "row": self.row,
        }

    def to_json(self) -> bytes:
        return encode_json(self.to_dict()).encode()

    @classmethod
    def from_dict(cls, data: Any) -> Event:
        """The event of a decoded record, its keys and their types checked."""
        if not isinstance(data, dict):
            raise EventDecodeError("event is not a JSON object")
        missing = {"schema", "model", "op", "pk", "version"} - data.keys()
        if missing:
            raise EventDecodeError(f"event lacks {', '.join(sorted(missing))}")
        if data["schema"] != SCHEMA_VERSION:
            raise EventDecodeError(f"unsupported event schema {quote_value(data['schema'])}")
        if data["op"] not in OPS:
            raise EventDecodeError(f"unknown op {quote_value(data['op'])}")
        if not isinstance(data["version"], int) or isinstance(data["version"], bool):
            raise EventDecodeError(f"version {quote_value(data['version'])} is not an integer")
        for key in _TEXT_KEYS:  # a list or object here would travel on into every message
            if not isinstance(data.get(key, ""), str):
                raise EventDecodeError(f"{key} {quote_value(data[key])} is not a string")
        row = data.get("row")
        if data["op"] in (UPSERT, CALL) and not isinstance(row, dict):
            raise EventDecodeError(f"{data['op']} event has no row")
        return cls(
            model=data["model"],
            op=data["op"],
            pk=decode_value(data["pk"]),
            version=data["version"],
            row=row,
            source=data.get("source", ""),
            tx=data.get("tx", ""),
            ts=data.get("ts", ""),
            id=data.get("id", ""),
            schema=data["schema"],
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Event:
        try:
            data, _ = load_json(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EventDecodeError(f"not JSON: {exc}") from None
        except RecursionError:
            raise EventDecodeError(TOO_DEEP) from None
        return cls.from_dict(data)


#: Keys of an event whose values are text.
_TEXT_KEYS = ("model", "source", "tx", "ts", "id")


def pk_text(pk: Any) -> str:
    """The primary key as the text the version store and partition keys use."""
    return str(pk)


def partition_key(model_label: str, pk: Any) -> str:
    """Kinesis partition key: one row's events share a shard, so they stay in order."""
    return f"{model_label.lower()}:{pk_text(pk)}"


#: Event ids are UUIDv5s of (transaction, version): stable when a batch is shipped twice.
EVENT_ID_NAMESPACE = uuid.UUID("5d0b9f0e-6c1a-4d7e-9a43-2f6f3f0b8e21")
_ID_HASH = hashlib.sha1(EVENT_ID_NAMESPACE.bytes, usedforsecurity=False)


def event_id(tx: str, version: int) -> str:
    """``str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{tx}/{version}"))``, a fraction of the
    cost: the namespace is hashed once, and the version and variant bits are set in the
    hex text instead of on a ``UUID`` object made per event."""
    digest = _ID_HASH.copy()
    digest.update(f"{tx}/{version}".encode())
    h = digest.hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


#: The hex digit of the RFC 4122 variant (binary 10xx) for each hex digit of the hash.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def event_dicts(batch_id: int, model_label: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Expand one outbox payload into wire events, numbering versions by position."""
    base = {
        "schema": SCHEMA_VERSION,
        "model": model_label,
        "source": payload["source"],
        "tx": payload["tx"],
        "ts": payload["ts"],
    }
    columns = payload["columns"]
    base_version = payload.get("gen", 0) * GENERATION_STRIDE + batch_id * VERSION_STRIDE
    events = []
    for position, op in enumerate(payload["ops"]):
        version = base_version + position
        event = {
            **base,
            "id": event_id(payload["tx"], version),
            "op": _OP_CODES[op[0]],
            "pk": op[1],
            "version": version,
            "row": dict(zip(columns, op[2], strict=True)) if op[0] != "d" else None,
        }
        events.append(event)
    return events


def wire_events(
    batch_id: int, model_label: str, raw_payload: bytes | str
) -> list[tuple[str, bytes]]:
    """Each event of one stored outbox payload as (partition key, JSON), as the relay
    ships them: the JSON that ``event_dicts`` would give, written around each row's
    image from the parts every event of the payload shares, without a dict per event
    or a pass through ``encode_value`` (the payload's values are the events' already)."""
    payload, exact = load_json(raw_payload)
    if not exact:  # NaN or infinities: the stdlib writes them as they were read
        return [
            (partition_key(model_label, decode_value(event["pk"])), dump_json(event, False))
            for event in event_dicts(batch_id, model_label, payload)
        ]
    encode = _fast_encode
    head = b'{"schema":%d,"model":%b,"source":%b,"tx":%b,"ts":%b,"id":"' % (
        SCHEMA_VERSION,
        encode(model_label),
        encode(payload["source"]),
        encode(payload["tx"]),
        encode(payload["ts"]),
    )
    tx, columns, prefix = payload["tx"], payload["columns"], f"{model_label.lower()}:"
    version = payload.get("gen", 0) * GENERATION_STRIDE + batch_id * VERSION_STRIDE
    wire = []
    for op in payload["ops"]:  # [code, pk, values], a delete without values
        code, pk = op[0], op[1]
        row = b"null" if code == "d" else encode(dict(zip(columns, op[2], strict=True)))
        data = b'%b%b","op":"%b","pk":%b,"version":%d,"row":%b}' % (
            head,
            event_id(tx, version).encode(),
            _OP_BYTES[code],
            encode(pk),
            version,
            row,
        )
        text = str(pk) if type(pk) is int or type(pk) is str else pk_text(decode_value(pk))
        wire.append((prefix + text, data))
        version += 1
    return wire


#: Each op code's name as it stands in the JSON.
_OP_BYTES = {code: op.encode() for code, op in _OP_CODES.items()}


def decode_row(model: type[models.Model], row: dict[str, Any]) -> dict[str, Any]:
    """The event's image as ``{attname: python value}``; unknown columns are an error."""
    by_column = {f.column: f for f in model._meta.concrete_fields}
    values = {}
    for column, raw in row.items():
        f = by_column.get(column)
        if f is None:
            raise EventDecodeError(f"{model._meta.label} has no column {column!r}")
        values[f.attname] = decode_column(f, raw)
    return values
