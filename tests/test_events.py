"""The event format: every built-in field type survives save -> capture -> stream ->
decode -> replay exactly, and malformed records are refused with a clear error."""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.db import models, transaction
from hypothesis import example, given
from hypothesis import strategies as st

from django_mirror.core.batching import unique
from django_mirror.core.events import (
    DELETE,
    EVENT_ID_NAMESPACE,
    UPSERT,
    VERSION_STRIDE,
    Event,
    EventDecodeError,
    decode_column,
    decode_row,
    decode_value,
    dump_json,
    encode_column,
    encode_json,
    encode_value,
    event_dicts,
    load_json,
    wire_events,
)
from django_mirror.models import OutboxBatch
from django_mirror.pipeline import relay
from django_mirror.streams import KinesisStream
from tests.conftest import BOTH, assert_mirrored, both_databases, drain_and_replay, rows
from tests.faults import shard_events
from tests.testapp.models import AllTypes, Author, BigKey, Secret

#: These tests read the events in the outbox before shipping them themselves.
pytestmark = pytest.mark.usefixtures("relay_off")

both_aliases = pytest.mark.django_db(databases=BOTH)

#: Keys that look like this format's own tags, inside a JSON column's document.
TRICKY_JSON = {
    "$dec": "1.50",
    "$uuid": "not-a-uuid",
    "nested": {"$b64": "@@@", "$json": {"a": []}, "list": [1, 2.5, None, True, "é🎉", {}]},
    "big": 2**53 + 1,
    "": "empty key",
}


def outbox_events() -> list[dict[str, Any]]:
    """The wire events of everything captured so far, in outbox order."""
    events: list[dict[str, Any]] = []
    for batch in OutboxBatch.objects.using("default").order_by("id"):
        events.extend(batch.events())
    return events


def stream_events(stream: KinesisStream) -> list[Event]:
    """Every record on the stream, decoded the way replay decodes it."""
    return [event for events in shard_events(stream).values() for event in events]


def db_row(model: type, pk: Any, alias: str = "default") -> dict[str, Any]:
    """The row as the database returns it, binary as bytes."""
    row = rows(model, alias)[pk]
    return {k: bytes(v) if isinstance(v, memoryview) else v for k, v in row.items()}


def same_sign(a: float, b: float) -> bool:
    return math.copysign(1.0, a) == math.copysign(1.0, b)


def make_all_types(author: Author) -> list[AllTypes]:
    kolkata = ZoneInfo("Asia/Kolkata")
    full = AllTypes.objects.create(
        text='naïve café — 日本語 🐍🎉 "quoted" \\ back\nslash\ttab',
        char="Zoë 😀",
        big=2**63 - 1,
        small=-32768,
        dec=Decimal("12345.678900"),
        flt=-0.0,
        flag=True,
        day=dt.date(2024, 2, 29),
        moment=dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=kolkata),
        clock=dt.time(23, 59, 59, 123456),
        span=dt.timedelta(days=1234, seconds=5, microseconds=6),
        ref=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        blob=bytes(range(256)) + b"\xff\xfe\x00\xc3(",
        doc=TRICKY_JSON,
        ip="2001:0DB8:0000:0000:0000:0000:0000:0001",
        maybe="here",
        author=author,
    )
    large = AllTypes.objects.create(
        flt=1.7976931348623157e308,
        dec=Decimal("-0.000001"),
        big=-(2**63),
        doc=["a", {"$float": "nan"}],
        ip="192.0.2.1",
        span=dt.timedelta(days=-2, microseconds=3),
        blob=b"",
    )
    empty = AllTypes.objects.create(flt=0.1 + 0.2, doc="just a string")
    # Values whose stored form the database normalises: the event must carry that form.
    AllTypes.objects.filter(pk=empty.pk).update(dec=Decimal("1.5"), text="")
    return [full, large, empty]


@both_databases
def test_every_field_type_round_trips_through_capture_stream_and_replay(kinesis):
    author = Author.objects.create(name="Ada")
    objs = make_all_types(author)
    captured = [e for e in outbox_events() if e["model"] == "testapp.AllTypes"]

    relay.drain()
    on_stream = {e.id: e for e in stream_events(kinesis)}
    assert {e["id"] for e in outbox_events()} <= set(on_stream)  # nothing left behind
    for wire in captured:
        event = on_stream[wire["id"]]
        # The stream carries exactly what capture wrote, and decodes back to it.
        assert event.to_dict() == wire
        assert Event.from_json(event.to_json()).to_dict() == wire
        assert event.op == UPSERT
        values = decode_row(AllTypes, event.row or {})
        assert values["id"] == event.pk
    latest = {}
    for event in sorted(on_stream.values(), key=lambda e: e.version):
        if event.model == "testapp.AllTypes":
            latest[event.pk] = decode_row(AllTypes, event.row or {})
    assert set(latest) == {obj.pk for obj in objs}
    for obj in objs:
        source = db_row(AllTypes, obj.pk)
        assert latest[obj.pk] == source  # the image is what the database committed
        assert same_sign(latest[obj.pk]["flt"], source["flt"])
        assert str(latest[obj.pk]["dec"]) == str(source["dec"])

    full = latest[objs[0].pk]
    assert full["doc"] == TRICKY_JSON  # tag-like keys stay plain JSON keys
    assert full["blob"] == bytes(range(256)) + b"\xff\xfe\x00\xc3("
    assert str(full["dec"]) == "12345.678900"
    assert full["moment"] == dt.datetime(2024, 2, 29, 18, 29, 59, 999999, tzinfo=dt.UTC)
    assert full["moment"].utcoffset() == dt.timedelta(0)
    assert full["ip"] == "2001:db8::1"
    assert full["author_id"] == objs[0].author_id
    assert latest[objs[1].pk]["flt"] == 1.7976931348623157e308
    assert latest[objs[1].pk]["doc"] == ["a", {"$float": "nan"}]
    assert latest[objs[2].pk]["doc"] == "just a string"
    assert latest[objs[2].pk]["maybe"] is None and latest[objs[2].pk]["day"] is None

    drain_and_replay()
    assert_mirrored(AllTypes)
    for obj in objs:
        source, target = db_row(AllTypes, obj.pk), db_row(AllTypes, obj.pk, "new")
        for name, value in source.items():
            assert target[name] == value, name
            assert type(target[name]) is type(value), name
        assert same_sign(target["flt"], source["flt"])
        assert str(target["dec"]) == str(source["dec"])


@both_databases
def test_all_null_row_round_trips(kinesis):
    obj = AllTypes.objects.create()
    (event,) = outbox_events()
    values = decode_row(AllTypes, event["row"])
    nullable = ["day", "moment", "clock", "span", "ref", "blob", "doc", "ip", "maybe", "author_id"]
    assert {name: values[name] for name in nullable} == dict.fromkeys(nullable)
    assert values == db_row(AllTypes, obj.pk)
    drain_and_replay()
    assert_mirrored(AllTypes)


@both_databases
def test_big_integer_primary_keys_round_trip(kinesis):
    keys = [2**62, 2**63 - 1, -(2**62)]
    for key in keys:
        BigKey.objects.create(id=key, name=f"k{key}")
    events = outbox_events()
    assert [e["pk"] for e in events] == keys  # plain JSON integers, not floats
    assert [Event.from_json(json.dumps(e)).pk for e in events] == keys
    BigKey.objects.filter(id=2**62).update(name="renamed")
    BigKey.objects.filter(id=-(2**62)).delete()
    drain_and_replay()
    assert_mirrored(BigKey)
    assert BigKey.objects.using("new").get(id=2**62).name == "renamed"


@both_databases
def test_events_carry_transaction_time_and_commit_order():
    with transaction.atomic():
        first = Author.objects.create(name="a")
        first.name = "b"
        first.save()
    Author.objects.create(name="c")
    events = outbox_events()
    assert [e["op"] for e in events] == [UPSERT, UPSERT, UPSERT]
    assert events[0]["tx"] == events[1]["tx"] != events[2]["tx"]
    versions = [e["version"] for e in events]
    assert versions == sorted(versions) and len(set(versions)) == 3
    assert len({e["id"] for e in events}) == 3
    for event in events:
        assert dt.datetime.fromisoformat(event["ts"]).utcoffset() is not None
        assert event["source"] == "default" and event["schema"] == 1


@both_aliases
def test_excluded_fields_never_leave_the_source():
    secret = Secret.objects.create(name="s", token="hunter2-token")
    secret.token = "other-token"
    secret.save()
    Secret.objects.filter(pk=secret.pk).update(name="t")
    Secret.objects.bulk_create([Secret(name="u", token="bulk-token")])
    payloads = [b.payload for b in OutboxBatch.objects.all()]
    assert payloads and not any("token" in text for text in payloads)
    for event in outbox_events():
        assert set(event["row"]) == {"id", "name"}


# --- value encoding units ---------------------------------------------------------------------


def _round_trip(value: Any) -> Any:
    """Encode, go through strict JSON text, decode."""
    text = json.dumps(encode_value(value), allow_nan=False)
    return decode_value(json.loads(text))


def test_naive_and_aware_datetimes_keep_their_offset():
    naive = dt.datetime(2024, 1, 2, 3, 4, 5, 6)
    assert encode_value(naive) == {"$dt": "2024-01-02T03:04:05.000006"}
    assert _round_trip(naive) == naive and _round_trip(naive).tzinfo is None
    aware = dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    back = _round_trip(aware)
    assert back == aware and back.utcoffset() == dt.timedelta(hours=-5)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_travel_as_strict_json(value: float):
    back = _round_trip(value)
    assert type(back) is float
    assert math.isnan(back) if math.isnan(value) else back == value


@pytest.mark.parametrize(
    "value",
    [
        -0.0,
        5e-324,
        0.1 + 0.2,
        Decimal("0.000000"),
        Decimal("-12345.678900"),
        Decimal("1E+30"),
        dt.timedelta(days=-2, microseconds=3),
        dt.timedelta(0),
        dt.time(0, 0),
        dt.date(1, 1, 1),
        uuid.UUID(int=0),
        b"\x00\xff",
        b"",
        "",
        "🎉",
        True,
        False,
        None,
        0,
        -(2**63),
    ],
    ids=repr,
)
def test_scalar_values_round_trip_exactly(value: Any):
    back = _round_trip(value)
    assert back == value and type(back) is type(value)
    if isinstance(value, float):
        assert same_sign(back, value)
    if isinstance(value, Decimal):
        assert str(back) == str(value)


# --- malformed input -------------------------------------------------------------------------


GOOD = {
    "schema": 1,
    "id": "e",
    "model": "testapp.Author",
    "op": UPSERT,
    "pk": 1,
    "version": 7,
    "row": {"id": 1, "name": "Ada"},
}


def test_a_good_event_decodes():
    event = Event.from_json(json.dumps(GOOD))
    assert (event.model, event.op, event.pk, event.version) == ("testapp.Author", UPSERT, 1, 7)
    delete = Event.from_json(json.dumps({**GOOD, "op": DELETE, "row": None}))
    assert delete.op == DELETE and delete.row is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (b"", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"event"', "not a JSON object"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "pk"}), "lacks pk"),
        (
            json.dumps({k: v for k, v in GOOD.items() if k not in ("op", "model")}),
            "lacks model, op",
        ),
        (json.dumps({**GOOD, "schema": 2}), "unsupported event schema 2"),
        (json.dumps({**GOOD, "schema": "1"}), "unsupported event schema"),
        (json.dumps({**GOOD, "op": "merge"}), "unknown op 'merge'"),
        (json.dumps({**GOOD, "version": "7"}), "not an integer"),
        (json.dumps({**GOOD, "version": True}), "not an integer"),
        (json.dumps({**GOOD, "row": None}), "upsert event has no row"),
        (json.dumps({**GOOD, "pk": {"a": 1, "b": 2}}), "untagged object value"),
        (json.dumps({**GOOD, "pk": {"id": 1}}), "unknown value tag"),
        (json.dumps({**GOOD, "pk": [1]}), "untagged list value"),
        (json.dumps({**GOOD, "pk": {"$uuid": "not-a-uuid"}}), "bad $uuid value"),
        (json.dumps({**GOOD, "pk": {"$dec": "twelve"}}), "bad $dec value"),
    ],
)
def test_malformed_records_are_refused_with_a_reason(raw: Any, message: str):
    with pytest.raises(EventDecodeError, match=message.replace("$", r"\$")):
        Event.from_json(raw)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"$dt": "yesterday"}, r"bad \$dt value"),
        ({"$dt": 5}, r"bad \$dt value"),
        ({"$date": "2024-02-30"}, r"bad \$date value"),
        ({"$time": "25:00"}, r"bad \$time value"),
        ({"$td": "long"}, r"bad \$td value"),
        ({"$float": "many"}, r"bad \$float value"),
        ({"$b64": "@@@@"}, r"bad \$b64 value"),
        ({"$b64": "abc"}, r"bad \$b64 value"),
        ({"$b64": 12}, r"bad \$b64 value"),
        ({"$money": "1"}, "unknown value tag"),
        ({"name": "Ada"}, "unknown value tag"),
        ({}, "untagged object value"),
        ([1, 2], "untagged list value"),
    ],
    ids=repr,
)
def test_malformed_values_are_refused_with_a_reason(value: Any, message: str):
    with pytest.raises(EventDecodeError, match=message):
        decode_value(value)


def test_a_row_naming_an_unknown_column_is_refused():
    with pytest.raises(EventDecodeError, match="has no column 'nickname'"):
        decode_row(Author, {"id": 1, "nickname": "A"})
    with pytest.raises(EventDecodeError, match="untagged object value"):
        decode_row(Author, {"id": 1, "name": {"first": "A", "last": "L"}})


json_documents = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities too: JSONField contents may hold them
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_documents)
def test_event_json_is_what_json_dumps_writes(value: Any) -> None:
    """The reused C encoder writes exactly the standard library's compact JSON."""
    assert encode_json(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@given(json_documents)
@example({"$json": [2**64, -(2**63) - 1, 10**30, 18446744073709551615]})
@example({"$json": {"nan": float("nan"), "inf": float("-inf")}})
@example({"$td": 86_399_999_999_999_999_999})
def test_fast_json_reads_and_writes_back_exactly_what_the_stdlib_does(value: Any) -> None:
    """msgspec refuses NaN and infinities (its encoder would write them as null): such
    documents take the stdlib's way, so every value comes back as it went."""
    text = encode_json(value)
    for raw in (text, text.encode()):
        parsed, exact = load_json(raw)
        assert encode_json(parsed) == text
        assert encode_json(json.loads(dump_json(parsed, exact))) == text


def test_wire_events_are_the_batch_events_as_json_and_their_partition_keys() -> None:
    payload = {
        "source": "default",
        "tx": "t-1",
        "ts": "2024-05-01T12:00:00+00:00",
        "columns": ["id", "name", "data"],
        "ops": [
            ["u", 7, [7, "Ada", {"$json": {"big": 2**70}}]],
            ["u", {"$uuid": "12345678-1234-5678-1234-567812345678"}, [8, "é", None]],
            ["d", "text-key"],
        ],
    }
    raw = encode_json(payload)
    wire = wire_events(41, "testapp.Author", raw)
    expected = event_dicts(41, "testapp.Author", json.loads(raw))
    assert [key for key, _ in wire] == [
        "testapp.author:7",
        "testapp.author:12345678-1234-5678-1234-567812345678",
        "testapp.author:text-key",
    ]
    assert [json.loads(data) for _, data in wire] == expected
    assert expected[0]["id"] == str(uuid.uuid5(EVENT_ID_NAMESPACE, f"t-1/{41 * VERSION_STRIDE}"))


def test_event_json_refuses_what_json_cannot_carry() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode_json({"when": dt.date(2024, 1, 1)})


class Team:
    """A value object only its field knows how to store (as Django's serializer tests)."""

    def __init__(self, title: str) -> None:
        self.title = title

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Team) and other.title == self.title

    __hash__ = None  # type: ignore[assignment]  # like custom_pk's MyWrapper


class TeamField(models.CharField):
    def to_python(self, value: Any) -> Any:
        return value if isinstance(value, Team) or value is None else Team(value)

    def get_prep_value(self, value: Any) -> Any:
        return None if value is None else value.title

    def value_to_string(self, obj: Any) -> str:
        return self.value_from_object(obj).title


class UUIDEncoder(json.JSONEncoder):
    def default(self, o: Any) -> Any:
        return str(o) if isinstance(o, uuid.UUID) else super().default(o)


def _field(field: models.Field, name: str) -> models.Field:
    field.set_attributes_from_name(name)
    return field


def test_a_value_no_tag_covers_travels_as_its_fields_text():
    field = _field(TeamField(max_length=20), "team")
    encoded = encode_column(field, Team("Ajax"))
    assert encoded == {"$field": "Ajax"}
    wire = json.loads(encode_json(encoded))
    assert decode_column(field, wire) == Team("Ajax")
    assert decode_value(wire) == "Ajax"  # without the field: its text


def test_a_value_its_field_cannot_write_as_text_is_refused():
    field = _field(models.IntegerField(), "n")
    with pytest.raises(TypeError, match="cannot encode"):
        encode_column(field, object())


def test_json_with_a_custom_encoder_travels_as_the_database_holds_it():
    field = _field(models.JSONField(encoder=UUIDEncoder), "doc")
    key = uuid.UUID(int=7)
    assert encode_column(field, {"id": key}) == {"$json": {"id": str(key)}}


def test_unique_keeps_order_also_for_unhashable_values():
    assert unique([3, 1, 3, 2, 1]) == [3, 1, 2]
    assert unique([Team("a"), Team("b"), Team("a")]) == [Team("a"), Team("b")]


class Tag:
    """A value object with no text form of its own (as Django's postgres_tests)."""

    def __init__(self, tag_id: int) -> None:
        self.tag_id = tag_id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tag) and other.tag_id == self.tag_id

    __hash__ = None  # type: ignore[assignment]


class TagField(models.SmallIntegerField):
    def to_python(self, value: Any) -> Any:
        return value if isinstance(value, Tag) or value is None else Tag(int(value))

    def get_prep_value(self, value: Any) -> Any:
        return value.tag_id


def test_a_value_with_no_text_form_travels_as_its_fields_plain_value():
    field = _field(TagField(), "tag")
    encoded = encode_column(field, Tag(3))
    assert encoded == {"$prep": 3}
    assert decode_column(field, json.loads(encode_json(encoded))) == Tag(3)


def test_array_items_travel_each_as_their_base_fields_value():
    from django.contrib.postgres.fields import ArrayField

    field = _field(ArrayField(TagField()), "tags")
    encoded = encode_column(field, [Tag(1), Tag(2)])
    assert encoded == {"$list": [{"$prep": 1}, {"$prep": 2}]}
    assert decode_column(field, json.loads(encode_json(encoded))) == [Tag(1), Tag(2)]
    assert encode_column(_field(ArrayField(models.IntegerField()), "n"), [1, 2]) == {
        "$list": [1, 2]
    }
