"""Values DynamoDB cannot hold, against moto: each row is stored exactly (in another form
where N cannot hold a number) or dead-lettered with the reason, never silently changed,
and replay and ``mirror_copy`` go on to the end of the stream and the table.

moto accepts numbers of more than 38 significant digits and documents nested deeper
than 32 levels, which DynamoDB refuses (with the whole batch); the items stored here are
checked against DynamoDB's own rules, so a test fails where DynamoDB would."""

from __future__ import annotations

import json
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connections

from django_mirror import paused
from django_mirror.core.events import Event
from django_mirror.models import DeadLetter
from django_mirror.targets import DynamoDBTarget
from django_mirror.targets.dynamodb import MAX_ITEM_BYTES
from tests.conftest import both_databases, drain_and_replay
from tests.conftest import upsert_event as upsert
from tests.test_dynamodb import DYNAMO
from tests.testapp.models import AllTypes, Author


def nested(levels: int) -> Any:
    """A JSON document of ``levels`` maps and lists, one in the other."""
    doc: Any = "bottom"
    for level in range(levels):
        doc = {"a": doc} if level % 2 else [doc]
    return doc


#: Values N cannot hold: each must read back exactly, type included.
EXACT = {
    "json_huge_float": {"doc": 1e200},
    "json_tiny_float": {"doc": [1e-200, -5e-324]},
    "json_nan": {"doc": {"x": float("nan")}},
    "json_int_40_digits": {"doc": {"n": 2**130}},
    "json_int_39_digits": {"doc": [10**38 + 1]},
    "int_40_digits": {"big": 2**130},
    "decimal_40_digits": {"dec": Decimal("1234567890123456789012345678901234.567891")},
    "float_huge": {"flt": 1e300},
}
#: Rows DynamoDB refuses: each must be dead-lettered with this reason.
REFUSED = {
    "over_400_kb": ({"text": "x" * (MAX_ITEM_BYTES + 1)}, "400 KB"),
    "json_33_levels": ({"doc": nested(33)}, "nested deeper than DynamoDB's 32 levels"),
}
#: Values the source databases themselves hold (another producer's events bring the rest).
IN_SOURCE = ["json_huge_float", "json_tiny_float", "json_int_40_digits", "json_int_39_digits"]
IN_SOURCE += ["float_huge"]


def refused_in_source() -> dict[str, tuple[dict[str, Any], str]]:
    """The refused rows the source database can hold: MariaDB's own JSON check refuses
    documents nested deeper than 32 levels, as DynamoDB does."""
    if connections["default"].vendor == "mysql":
        return {name: v for name, v in REFUSED.items() if name != "json_33_levels"}
    return REFUSED


def dynamodb_takes(attribute: dict[str, Any], depth: int = 0) -> None:
    """Fail where DynamoDB would refuse the attribute (moto does not check these)."""
    ((kind, raw),) = attribute.items()
    if kind in ("M", "L"):
        assert depth < 32, "nested deeper than DynamoDB allows"
        for item in raw.values() if kind == "M" else raw:
            dynamodb_takes(item, depth + 1)
    elif kind == "N":
        number = Decimal(raw)
        digits = len(bytes(number.as_tuple().digits).strip(b"\0"))
        assert digits <= 38, f"N {raw} has {digits} significant digits"
        assert not number or -130 <= number.adjusted() <= 125, f"N {raw} is out of range"


def assert_exact(row: dict[str, Any], obj: AllTypes, names: Any = ("doc", "big", "flt")) -> None:
    """The values read back are the values written, types included (``repr``: NaN, and
    the types inside JSON documents)."""
    for name in names:
        assert repr(row[name]) == repr(getattr(obj, name)), name


def stored(target: DynamoDBTarget, pk: Any) -> dict[str, Any]:
    item = target.client.get_item(
        TableName=target.table(AllTypes), Key={"pk": {"S": str(pk)}}, ConsistentRead=True
    )["Item"]
    for attribute in item.values():
        dynamodb_takes(attribute)
    return item


@pytest.fixture
def dynamo(aws: None) -> DynamoDBTarget:
    target = DynamoDBTarget(table_name="t_{model_name}", base_delay=0.001, max_delay=0.01)
    target.setup([AllTypes, Author])
    return target


@pytest.mark.parametrize("values", EXACT.values(), ids=EXACT.keys())
def test_a_value_n_cannot_hold_is_stored_exactly(dynamo: DynamoDBTarget, values: dict) -> None:
    """``1e200`` in a JSONField read back as the string "1e+200"; ``2**130`` was sent as
    an N of 40 digits (counted after rounding to 28), which DynamoDB refuses."""
    obj = AllTypes(**values)
    result = dynamo.apply([upsert(obj, 1)])
    assert result.applied == 1 and not result.failed
    stored(dynamo, obj.pk)
    assert_exact(dynamo.fetch(AllTypes, [obj.pk])[str(obj.pk)], obj, values)
    assert_exact(next(iter(dynamo.scan(AllTypes))), obj, values)


@pytest.mark.parametrize("values, reason", REFUSED.values(), ids=REFUSED.keys())
def test_a_row_dynamodb_refuses_fails_alone(
    dynamo: DynamoDBTarget, values: dict, reason: str
) -> None:
    bad, good = AllTypes(**values), AllTypes(text="fine")
    result = dynamo.apply([upsert(bad, 1), upsert(good, 1)])
    assert result.applied == 1
    [(event, why)] = result.failed
    assert event.pk == bad.pk and reason in why
    assert list(dynamo.fetch(AllTypes, [bad.pk, good.pk])) == [str(good.pk)]


def test_keys_and_versions_dynamodb_refuses_fail_alone(dynamo: DynamoDBTarget) -> None:
    """An empty key, a key over 2 KB and a version past 38 digits once failed the batch."""
    events = [
        Event(model="testapp.Author", op="upsert", pk="", version=1, row={"name": "empty"}),
        Event(model="testapp.Author", op="upsert", pk="k" * 3000, version=1, row={"name": "l"}),
        Event(model="testapp.Author", op="delete", pk=5, version=2**130),
        upsert(Author(pk=6, name="fine"), 1),
    ]
    result = dynamo.apply(events)
    assert result.applied == 1
    assert sorted(e.key[1][:3] for e, _ in result.failed) == ["", "5", "kkk"]
    assert list(dynamo.fetch(Author, [6])) == ["6"]


@both_databases
def test_replay_into_dynamodb_dead_letters_or_stores_each_bad_value_and_reaches_the_end(
    kinesis: Any,
) -> None:
    with _capture_to_dynamodb():
        call_command("mirror_setup", verbosity=0)
        first = Author.objects.create(name="first")
        exact = [AllTypes.objects.create(**EXACT[name]) for name in IN_SOURCE]
        refused = {
            name: AllTypes.objects.create(**v) for name, (v, _) in refused_in_source().items()
        }
        last = Author.objects.create(name="last")
        stats = drain_and_replay(batch_size=4)
        assert stats.dead_letters == len(refused)
        target = DynamoDBTarget(table_name="t_{model_name}")
        assert set(target.fetch(Author, [first.pk, last.pk])) == {str(first.pk), str(last.pk)}
        for obj in exact:
            stored(target, obj.pk)
            obj.refresh_from_db()  # as the source holds it (PostgreSQL writes 1e200 out)
            assert_exact(target.fetch(AllTypes, [obj.pk])[str(obj.pk)], obj)
        for name, obj in refused.items():
            letter = DeadLetter.objects.get(pk_value=str(obj.pk))
            assert REFUSED[name][1] in letter.reason and letter.sequence_number
            assert json.loads(bytes(letter.payload))["pk"] == {"$uuid": str(obj.pk)}


def _capture_to_dynamodb() -> Any:
    from django.conf import settings
    from django.test import override_settings

    models = {
        **settings.DJANGO_MIRROR["MODELS"],
        "testapp.AllTypes": {"target": DYNAMO},
        "testapp.Author": {"target": DYNAMO},
    }
    return override_settings(DJANGO_MIRROR={**settings.DJANGO_MIRROR, "MODELS": models})


@both_databases
def test_copy_into_dynamodb_dead_letters_refused_rows_and_reaches_the_end(kinesis: Any) -> None:
    with _capture_to_dynamodb():
        call_command("mirror_setup", verbosity=0)
        with paused():  # rows from before capture: only copy brings them
            rows = [AllTypes.objects.create(text=f"row {i}") for i in range(5)]
            refused = {
                name: AllTypes.objects.create(**v) for name, (v, _) in refused_in_source().items()
            }
            rows += [AllTypes.objects.create(**EXACT[name]) for name in IN_SOURCE]
        out = StringIO()
        call_command("mirror_copy", "testapp.AllTypes", "--chunk-size", "3", "--json", stdout=out)
        [report] = json.loads(out.getvalue())
        assert report["finished"] and report["read"] == len(rows) + len(refused)
        assert report["copied"] == len(rows) and report["dead_letters"] == len(refused)
        target = DynamoDBTarget(table_name="t_{model_name}")
        held = target.fetch(AllTypes, [r.pk for r in rows])
        for obj in rows:
            stored(target, obj.pk)
            obj.refresh_from_db()
            assert_exact(held[str(obj.pk)], obj)
        for name, obj in refused.items():
            letter = DeadLetter.objects.get(pk_value=str(obj.pk))
            assert letter.stage == "copy" and REFUSED[name][1] in letter.reason
        out = StringIO()
        with pytest.raises(CommandError):  # not copied: verify still reports them
            call_command(
                "mirror_verify", "testapp.AllTypes", "--recheck-delay", "0", "--json", stdout=out
            )
        [verify] = json.loads(out.getvalue())
        missing = {d["pk"] for d in verify["differences"] if d["kind"] == "missing"}
        assert missing == {str(obj.pk) for obj in refused.values()}
