"""DynamoDBTarget on moto: every field type round-trips, versions order writes, deletes
leave hidden tombstones, limits go to the dead-letter table, faults are retried."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from botocore.exceptions import ClientError
from django.conf import settings
from django.db.models import F
from django.test import override_settings

from django_mirror import paused
from django_mirror.models import DeadLetter
from django_mirror.targets import DynamoDBTarget
from django_mirror.targets.dynamodb import MAX_ITEM_BYTES
from tests.conftest import both_databases, drain_and_replay
from tests.conftest import delete_event as delete
from tests.conftest import upsert_event as upsert
from tests.faults import error_response, hooked, ok_response, request_body
from tests.testapp.models import AllTypes, Author, Counter

DYNAMO = {
    "BACKEND": "django_mirror.targets.DynamoDBTarget",
    "OPTIONS": {"table_name": "t_{model_name}"},
}


@pytest.fixture
def dynamo(aws: None) -> DynamoDBTarget:
    target = DynamoDBTarget(table_name="t_{model_name}", base_delay=0.001, max_delay=0.01)
    target.setup([AllTypes, Author, Counter])
    return target


ALL_TYPES = [
    AllTypes(
        text="unicode ✓ and emoji 🦄",
        char="",
        big=2**62,
        small=-7,
        dec=Decimal("12345678901234.500000"),
        flt=-0.1,
        flag=True,
        day=dt.date(1999, 12, 31),
        moment=dt.datetime(2026, 11, 26, 17, 0, 0, 123456, tzinfo=dt.UTC),
        clock=dt.time(23, 59, 59, 999999),
        span=dt.timedelta(days=-1, microseconds=5),
        ref=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        blob=b"\x00\xff binary",
        doc={"nested": [1, 2.5, {"deep": None, "s": "x"}], "t": True},
        ip="2001:db8::1",
        maybe=None,
    ),
    AllTypes(maybe="set", doc=[1, "two"], moment=None, blob=b"", dec=Decimal("0.000000")),
    AllTypes(doc="just a string", dec=Decimal("-0.000001"), flt=1e300, big=-(2**63)),
]


@pytest.mark.parametrize("obj", ALL_TYPES, ids=["everything", "sparse", "scalars"])
def test_every_field_type_round_trips(dynamo: DynamoDBTarget, obj: AllTypes):
    result = dynamo.apply([upsert(obj, 7)])
    assert result.applied == 1 and not result.failed
    row = dynamo.fetch(AllTypes, [obj.pk])[str(obj.pk)]
    for field in AllTypes._meta.concrete_fields:
        expected = getattr(obj, field.attname)
        if isinstance(expected, memoryview):
            expected = bytes(expected)
        assert row[field.attname] == expected, field.name
        assert type(row[field.attname]) is type(expected), field.name


def test_versions_order_writes_and_deletes_leave_hidden_tombstones(dynamo: DynamoDBTarget):
    author = Author(pk=1, name="v5")
    assert dynamo.apply([upsert(author, 5)]).applied == 1
    assert dynamo.apply([upsert(Author(pk=1, name="v3"), 3)]).stale == 1  # late, older
    assert dynamo.fetch(Author, [1])["1"]["name"] == "v5"
    both = dynamo.apply([upsert(Author(pk=1, name="v9"), 9), delete(author, 8)])
    assert both.applied == 1 and both.stale == 1  # only the newest per row is written
    assert dynamo.apply([delete(author, 10)]).applied == 1
    assert dynamo.fetch(Author, [1]) == {}
    assert list(dynamo.scan(Author)) == []
    assert dynamo.versions("testapp.Author", [1]) == {"1": (10, True)}
    assert dynamo.apply([upsert(Author(pk=1, name="zombie"), 6)]).stale == 1
    item = dynamo.client.get_item(TableName="t_author", Key={"pk": {"S": "1"}})["Item"]
    assert int(item["_ttl"]["N"]) > dt.datetime.now().timestamp() + 7 * 24 * 3600


def test_apply_reads_100_versions_and_writes_25_items_a_call(dynamo: DynamoDBTarget):
    """Requests per batch, by operation: one version read per 100 rows, one write per 25
    newer items (packed across reads), nothing per item; what is held at an equal or
    newer version stays."""
    dynamo.apply([upsert(Counter(pk=i, name=f"held {i}"), 5) for i in range(1, 251)])
    calls: list[str] = []  # appended to from the workers: a list's append is atomic

    def count(**kwargs: Any) -> None:
        calls.append(kwargs["model"].name)

    events = [upsert(Counter(pk=i, name=f"new {i}"), 5 if i % 10 else 6) for i in range(1, 301)]
    with hooked(dynamo.client, ("before-call.dynamodb.*", count)):
        result = dynamo.apply(events)
    stale = [i for i in range(1, 251) if i % 10]
    assert (result.applied, result.stale, result.failed) == (300 - len(stale), len(stale), [])
    assert sorted(calls) == ["BatchGetItem"] * 3 + ["BatchWriteItem"] * 3  # 75 newer items
    names = {int(k): row["name"] for k, row in dynamo.fetch(Counter, range(1, 301)).items()}
    assert names == {i: f"held {i}" if i in stale else f"new {i}" for i in range(1, 301)}


def test_a_stale_event_is_stale_even_where_its_item_would_be_refused(dynamo: DynamoDBTarget):
    """Items are built while the versions are read: one found stale is dropped, so an
    event superseded on the target is not dead-lettered for what it would have written."""
    held = AllTypes(pk=uuid.UUID(int=1), text="held")
    assert dynamo.apply([upsert(held, 5)]).applied == 1
    late = AllTypes(pk=held.pk, text="x" * (MAX_ITEM_BYTES + 1))
    result = dynamo.apply([upsert(late, 4)])
    assert (result.applied, result.stale, result.failed) == (0, 1, [])
    assert dynamo.fetch(AllTypes, [held.pk])[str(held.pk)]["text"] == "held"


def test_copy_inserts_only_where_nothing_is_held(dynamo: DynamoDBTarget):
    dynamo.apply([upsert(Author(pk=1, name="replayed"), 4), delete(Author(pk=2), 5)])
    rows = [{"id": pk, "name": f"copied {pk}"} for pk in (1, 2, 3)]
    result = dynamo.copy(Author, rows)
    assert (result.copied, result.skipped) == (1, 2)
    assert {k: r["name"] for k, r in dynamo.fetch(Author, [1, 2, 3]).items()} == {
        "1": "replayed",
        "3": "copied 3",
    }
    assert dynamo.apply([upsert(Author(pk=3, name="captured"), 1)]).applied == 1  # > version 0


def test_scan_segments_cover_every_row_once(dynamo: DynamoDBTarget):
    dynamo.apply([upsert(Counter(pk=i, name=f"c{i}", value=i), 1) for i in range(1, 301)])
    seen = [row["id"] for segment in range(4) for row in dynamo.scan(Counter, segment, 4)]
    assert sorted(seen) == list(range(1, 301))


def test_an_item_over_400_kb_is_refused_with_the_reason(dynamo: DynamoDBTarget):
    big = AllTypes(text="x" * (MAX_ITEM_BYTES + 1))
    small = AllTypes(text="fine")
    result = dynamo.apply([upsert(big, 1), upsert(small, 1)])
    assert result.applied == 1
    [(event, reason)] = result.failed
    assert event.pk == big.pk and "400 KB" in reason and "ItemTooLarge" in reason


def test_unprocessed_items_and_throttling_are_retried(dynamo: DynamoDBTarget):
    """Throttled reads and writes DynamoDB left unprocessed, answered at the HTTP layer
    without reaching moto: the target asks again until everything is in."""
    calls = {"BatchGetItem": 0, "BatchWriteItem": 0}

    def answer(params: dict[str, Any], **kwargs: Any) -> Any:
        operation = kwargs["model"].name
        calls[operation] += 1
        if operation == "BatchGetItem" and calls[operation] <= 2:
            return error_response("ProvisionedThroughputExceededException", "slow down")
        if operation == "BatchWriteItem" and calls[operation] <= 2:
            return ok_response({"UnprocessedItems": request_body(params)["RequestItems"]})
        return None

    rows = [upsert(Counter(pk=i, name=f"c{i}"), 1) for i in range(1, 31)]
    with hooked(dynamo.client, ("before-call.dynamodb.*", answer)):
        result = dynamo.apply(rows)
    assert result.applied == 30
    assert calls["BatchGetItem"] >= 3 and calls["BatchWriteItem"] >= 4  # 2 refused + 2 of 25
    assert len(dynamo.fetch(Counter, range(1, 31))) == 30


def test_a_non_retryable_error_is_raised(dynamo: DynamoDBTarget):
    def refuse(**kwargs: Any) -> Any:
        return error_response("ValidationException", "bad request")

    with hooked(dynamo.client, ("before-call.dynamodb.BatchGetItem", refuse)):
        with pytest.raises(ClientError, match="bad request"):
            dynamo.apply([upsert(Counter(pk=1, name="c"), 1)])


def test_table_names_are_checked_against_dynamodbs_rules():
    with pytest.raises(ValueError, match="not a valid DynamoDB table name"):
        DynamoDBTarget(table_name="x{model_name}!").table(Author)
    assert DynamoDBTarget(table_name="{app_label}.{model_name}").table(Author) == "testapp.author"


def dynamo_settings() -> override_settings:
    models = {**settings.DJANGO_MIRROR["MODELS"], "testapp.Counter": {"target": DYNAMO}}
    return override_settings(DJANGO_MIRROR={**settings.DJANGO_MIRROR, "MODELS": models})


@both_databases
def test_capture_relay_and_replay_into_dynamodb(kinesis):
    from django.core.management import call_command

    with dynamo_settings():
        call_command("mirror_setup", verbosity=0)
        with paused():
            Counter.objects.create(name="before capture", value=1)
        counters = [Counter.objects.create(name=f"c{i}", value=i) for i in range(20)]
        Counter.objects.filter(pk__in=[c.pk for c in counters[:5]]).update(value=F("value") + 100)
        Counter.objects.filter(pk=counters[-1].pk).delete()
        drain_and_replay()
        call_command("mirror_copy", "testapp.Counter", verbosity=0)
        target = DynamoDBTarget(table_name="t_{model_name}")
        held = {
            int(k): (r["name"], r["value"])
            for k, r in target.fetch(
                Counter, list(Counter.objects.values_list("pk", flat=True)) + [counters[-1].pk]
            ).items()
        }
        source = {c.pk: (c.name, c.value) for c in Counter.objects.all()}
        assert held == source
        assert not DeadLetter.objects.exists()


@both_databases
def test_verify_against_dynamodb_finds_missing_changed_and_extra_rows(kinesis):
    from django.core.management import CommandError, call_command

    with dynamo_settings():
        call_command("mirror_setup", verbosity=0)
        counters = [Counter.objects.create(name=f"c{i}", value=i) for i in range(30)]
        drain_and_replay()
        out = StringIO()
        call_command("mirror_verify", "testapp.Counter", "--recheck-delay", "0", stdout=out)
        assert " 0 differ" in out.getvalue() and "fetch" in out.getvalue()
        client = DynamoDBTarget(table_name="t_{model_name}").client
        client.delete_item(TableName="t_counter", Key={"pk": {"S": str(counters[0].pk)}})
        client.update_item(
            TableName="t_counter",
            Key={"pk": {"S": str(counters[1].pk)}},
            UpdateExpression="SET #v = :v",
            ExpressionAttributeNames={"#v": "value"},
            ExpressionAttributeValues={":v": {"N": "999"}},
        )
        client.put_item(
            TableName="t_counter",
            Item={
                "pk": {"S": "9999"},
                "_v": {"N": "1"},
                "id": {"N": "9999"},
                "name": {"S": "ghost"},
                "value": {"N": "0"},
            },
        )
        out = StringIO()
        with pytest.raises(CommandError):
            call_command(
                "mirror_verify", "testapp.Counter", "--recheck-delay", "0", "--json", stdout=out
            )
        [report] = json.loads(out.getvalue())
        found = sorted((d["kind"], d["pk"]) for d in report["differences"])
        assert found == sorted(
            [("missing", str(counters[0].pk)), ("changed", str(counters[1].pk)), ("extra", "9999")]
        )
        with pytest.raises(CommandError, match="database targets only"):
            call_command(
                "mirror_verify",
                "testapp.Counter",
                "--repair",
                "--recheck-delay",
                "0",
                stdout=StringIO(),
            )


@both_databases
def test_live_mirroring_and_key_lookups_shadowed_on_dynamodb(kinesis, statsd):
    from django.core.management import call_command

    from django_mirror.models import MismatchRecord
    from django_mirror.shadow import get_pool, shadow_reads
    from tests.conftest import mirroring

    options = {"testapp.Counter": {"target": DYNAMO, "shadow_read_rate": 1.0}}
    with mirroring(options):
        call_command("mirror_setup", verbosity=0)
        counters = [Counter.objects.create(name=f"c{i}", value=i) for i in range(5)]
        target = DynamoDBTarget(table_name="t_{model_name}")
        assert len(target.fetch(Counter, [c.pk for c in counters])) == 5  # live, no replay
        with shadow_reads():
            Counter.objects.get(pk=counters[0].pk)
            list(Counter.objects.filter(pk__in=[c.pk for c in counters[:3]]))
            Counter.objects.filter(pk=counters[4].pk).first()
            Counter.objects.count()  # not a lookup by key: not comparable
            list(Counter.objects.filter(name="c1"))
            Counter.objects.filter(pk__in=[c.pk for c in counters]).first()  # picks by order
        assert get_pool().wait_idle(30)
        target.client.update_item(
            TableName="t_counter",
            Key={"pk": {"S": str(counters[2].pk)}},
            UpdateExpression="SET #v = :v",
            ExpressionAttributeNames={"#v": "value"},
            ExpressionAttributeValues={":v": {"N": "-1"}},
        )
        with shadow_reads():
            Counter.objects.get(pk=counters[2].pk)
        assert get_pool().wait_idle(30)
    lines = statsd.lines()
    assert statsd.total(lines, "django_mirror.read.match.testapp_counter") == 3
    assert statsd.total(lines, "django_mirror.read.not_comparable.testapp_counter") == 3
    assert statsd.total(lines, "django_mirror.read.mismatch.testapp_counter") == 1
    record = MismatchRecord.objects.get(kind="read")
    assert record.diff["fields"] == {"value": [2, -1]}


def test_dynamodb_over_real_http_on_the_moto_server(moto_server: str):
    """The same target through boto3's HTTP stack to moto's threaded server."""
    target = DynamoDBTarget(
        table_name=f"http{uuid.uuid4().hex[:8]}_{{model_name}}", endpoint_url=moto_server
    )
    assert target.setup([Author]) == [target.table(Author)]
    assert target.setup([Author]) == []  # exists now
    result = target.apply([upsert(Author(pk=i, name=f"a{i}"), 1) for i in range(1, 60)])
    assert result.applied == 59
    assert target.apply([delete(Author(pk=1), 2)]).applied == 1
    assert sorted(int(k) for k in target.fetch(Author, range(1, 60))) == list(range(2, 60))
    assert target.copy(Author, [{"id": 1, "name": "back"}, {"id": 99, "name": "new"}]).copied == 1
