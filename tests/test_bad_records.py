"""One bad record never stalls replay: whatever a stream record holds, it is applied or
kept as a dead letter (raw record, shard, sequence number, reason) and replay reads on to
the end of the stream; only an unreachable target stops it, without a checkpoint."""

from __future__ import annotations

import json
from typing import Any

import pytest

from django_mirror.core.events import Event
from django_mirror.models import DeadLetter, ShardCheckpoint
from django_mirror.pipeline import relay
from django_mirror.streams import KinesisStream
from tests.conftest import both_databases, drain_and_replay
from tests.faults import stream_records
from tests.test_dead_letters import put_raw, replay_json
from tests.testapp.models import Counter


def counter_event(pk: int, **row: Any) -> bytes:
    """A hand-made Counter upsert, as another producer might write it."""
    image = {"id": pk, "name": f"bad{pk}", "value": 0, **row}
    return Event(model="testapp.Counter", op="upsert", pk=pk, version=1, row=image).to_json()


def replay_around(stream: KinesisStream, bad: dict[str, bytes]) -> dict[str, Any]:
    """Good writes, the bad records, good writes again; replayed to the end of the stream."""
    Counter.objects.create(name="before", value=1)
    relay.drain()
    for name, data in bad.items():
        put_raw(stream, data, key=name)
    Counter.objects.create(name="after", value=2)
    relay.drain()
    stats = replay_json("--batch-size", "3")
    total = sum(len(records) for records in stream_records(stream).values())
    assert stats["read"] == total, "replay stopped before the end of the stream"
    assert stats["dead_letters"] == DeadLetter.objects.count() >= len(bad)
    names = set(Counter.objects.using("new").values_list("name", flat=True))
    assert {"before", "after"} <= names
    return stats


def assert_kept(data: bytes, reason: str) -> DeadLetter:
    """The raw record is kept whole, with where it came from and why."""
    [letter] = [d for d in DeadLetter.objects.all() if bytes(d.payload) == data]
    assert reason in letter.reason, letter.reason
    assert letter.shard_id and letter.sequence_number and letter.stream
    return letter


DEEP = 100_000


@both_databases
def test_deeply_nested_records_are_dead_lettered(kinesis: KinesisStream) -> None:
    """Too deep for the JSON parser, or for the tag decoder: both once ended replay with
    ``RecursionError``."""
    too_deep = b'{"schema":1,"model":"testapp.Counter","op":"upsert","pk":1,"version":1,"row":'
    too_deep += b"[" * DEEP + b"]" * DEEP + b"}"
    # Written out as text: encoding 3,000 levels would itself recurse too deep (3.11).
    marker = b'"value":0'
    deep_tags = counter_event(901).replace(
        marker, b'"value":' + b'{"$list":[' * 3000 + b"1" + b"]}" * 3000, 1
    )
    assert deep_tags != counter_event(901)
    replay_around(kinesis, {"parser": too_deep, "tags": deep_tags})
    assert_kept(too_deep, "undecodable record: nested too deeply")
    assert_kept(deep_tags, "nested too deeply")
    assert not Counter.objects.using("new").filter(pk=901).exists()


@both_databases
def test_an_integer_column_refuses_text_and_integers_beyond_its_range(
    kinesis: KinesisStream,
) -> None:
    """SQLite raised ``OverflowError`` past 64 bits (replay ended) and stored text in an
    integer column; every database now refuses both, and replay goes on."""
    bad = {
        "huge": counter_event(902, value=2**70),
        "text": counter_event(903, value="not a number"),
        "digits": counter_event(904, value="12"),
        "huge_key": counter_event(2**70),
    }
    # Another key than huge_key's: one row's events of one version are one event.
    gone = Event(model="testapp.Counter", op="delete", pk=2**71, version=1).to_json()
    put_raw(kinesis, gone, key="gone")  # refused (SQLite) or matching no row: replay goes on
    replay_around(kinesis, bad)
    assert_kept(bad["huge"], "out of range")
    assert_kept(bad["text"], "expects an integer")
    assert_kept(bad["digits"], "expects an integer")
    assert_kept(bad["huge_key"], "out of range")
    held = Counter.objects.using("new").filter(pk__in=[902, 903, 904])
    assert not held.exists()


@both_databases
def test_a_record_whose_model_label_overflows_the_dead_letter_columns_is_kept(
    kinesis: KinesisStream,
) -> None:
    """The label is cut to the column and made storable; the payload keeps it whole."""
    long_label = "app." + "M" * 300
    odd_label = "app.\x00Nul\ud800"
    long = Event(model=long_label, op="upsert", pk="k" * 400, version=1, row={}).to_json()
    odd = json.dumps(
        {"schema": 1, "model": odd_label, "op": "delete", "pk": 1, "version": 1}
    ).encode()
    replay_around(kinesis, {"long": long, "odd": odd})
    letter = assert_kept(long, "is not a mirrored model here")
    assert letter.model == long_label[:200] and len(letter.pk_value) <= 255
    assert json.loads(bytes(letter.payload))["model"] == long_label
    letter = assert_kept(odd, "is not a mirrored model here")
    assert letter.model.startswith("app.") and "\x00" not in letter.model


@both_databases
def test_a_refused_event_is_kept_as_its_raw_record_with_its_sequence_number(
    kinesis: KinesisStream,
) -> None:
    """Not re-encoded: the bytes read from the stream, so nothing of them is lost."""
    raw = counter_event(905, name=None).replace(b'"op":', b'"op" : ')
    replay_around(kinesis, {"null": raw})
    letter = assert_kept(raw, "refused the event")
    assert letter.pk_value == "905" and letter.model == "testapp.Counter"


# --- repository calls --------------------------------------------------------------------------


@pytest.fixture
def follows() -> Any:
    from django_mirror.repositories import get
    from tests.test_repositories import repositories
    from tests.testapp.repositories import FollowStore

    with repositories():
        yield get(FollowStore)


class TargetDown(ConnectionError):
    """What a repository target's client raises when its server cannot be reached."""


@both_databases
@pytest.mark.usefixtures("relay_off")
def test_a_repository_target_that_is_down_stops_call_replay_without_a_checkpoint(
    kinesis: KinesisStream, follows: Any
) -> None:
    from django_mirror.models import MismatchRecord
    from tests.test_repositories import impl

    follows.follow(1, 90)
    target = impl("main")
    healthy = type(target).follow

    def down(*args: Any, **kwargs: Any) -> Any:
        raise TargetDown("connection refused")

    target.follow = down
    with pytest.raises(TargetDown):
        drain_and_replay()
    assert not DeadLetter.objects.exists() and not MismatchRecord.objects.exists()
    assert not ShardCheckpoint.objects.exclude(sequence_number="").exists()
    target.follow = healthy.__get__(target)
    drain_and_replay()
    assert target.follows == {90: {1: True}}
    assert not MismatchRecord.objects.exists()


@both_databases
@pytest.mark.usefixtures("relay_off")
def test_an_undeclared_error_of_a_repository_target_is_a_dead_letter_not_an_outcome(
    kinesis: KinesisStream, follows: Any
) -> None:
    """Only the interface's tolerated exceptions are outcomes to compare; anything else
    the target raises (here for a call it cannot make) keeps the record, and replay goes on."""
    from django_mirror.models import MismatchRecord
    from tests.test_repositories import impl

    follows.follow(1, 91)
    follows.follow(2, 92)
    target = impl("main")
    healthy = type(target).follow.__get__(target)

    def refuse(user: int, channel: int, *, notify: bool = True) -> int:
        if channel == 91:
            raise ValueError("channel 91 is closed")
        return healthy(user, channel, notify=notify)

    target.follow = refuse
    drain_and_replay()
    [letter] = DeadLetter.objects.all()
    assert "ValueError: channel 91 is closed" in letter.reason and letter.sequence_number
    assert not MismatchRecord.objects.exists()
    assert target.follows == {92: {2: True}}
