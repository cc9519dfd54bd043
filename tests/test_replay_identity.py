"""Replay never skips silently: checkpoints belong to one stream incarnation, and a
checkpoint whose record the stream no longer holds stops replay with the way back."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db.models import F

from django_mirror.models import ShardCheckpoint
from django_mirror.pipeline import relay
from django_mirror.streams import KinesisStream
from tests.conftest import assert_mirrored, both_databases, drain_and_replay
from tests.faults import Handler, hooked, stream_records
from tests.testapp.models import Counter

pytestmark = pytest.mark.usefixtures("relay_off")


class Trimmed:
    """Kinesis once retention dropped a shard's records up to ``through`` (moto never
    expires any): an iterator at the trim horizon, or at or after a dropped record, starts
    just after ``through``."""

    def __init__(self, through: str) -> None:
        self.through = int(through)

    def __call__(self, params: dict[str, Any], **kwargs: Any) -> None:
        sequence = params.get("StartingSequenceNumber")
        if params["ShardIteratorType"] == "TRIM_HORIZON" or int(sequence or 0) <= self.through:
            params["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
            params["StartingSequenceNumber"] = str(self.through)

    def hooks(self) -> list[tuple[str, Handler]]:
        return [("before-parameter-build.kinesis.GetShardIterator", self)]


def checkpoints() -> dict[str, tuple[str, str]]:
    return {
        cp.shard_id: (cp.sequence_number, cp.stream_identity)
        for cp in ShardCheckpoint.objects.filter(consumer="*")
    }


def recreate(stream: KinesisStream) -> None:
    """Delete the stream and create it again under its name, as an operator might."""
    stream.client.delete_stream(StreamName=stream.name)
    time.sleep(0.01)  # AWS takes seconds; moto's creation times have milliseconds
    assert stream.create()


def refused(*args: str) -> str:
    with pytest.raises(CommandError) as failure:
        call_command("mirror_replay", "--until-caught-up", *args, verbosity=0)
    return str(failure.value)


@both_databases
def test_recreated_stream_is_refused_and_the_way_back_converges(kinesis: KinesisStream) -> None:
    """Events lost with the old stream (an update, a delete, a create) never reach the
    target by replay: it refuses the new stream instead of reading it from the old
    checkpoints, and the commands it names bring the target back whole."""
    Counter.objects.bulk_create([Counter(name=f"c{i}") for i in range(20)])
    drain_and_replay()
    before = checkpoints()
    Counter.objects.filter(name__in=["c1", "c2"]).update(value=F("value") + 7)
    Counter.objects.filter(name="c3").delete()
    Counter.objects.create(name="lost")
    relay.drain()  # on the old stream, never replayed
    recreate(kinesis)
    Counter.objects.create(name="after")
    relay.drain()

    message = refused()
    assert message.startswith("replay refused: stream 'mirror-test' is not the stream")
    assert "deleted and created again" in message
    assert "`manage.py mirror_copy`" in message
    assert "`manage.py mirror_replay --from-start --until-caught-up`" in message
    assert "`manage.py mirror_verify --repair`" in message
    assert checkpoints() == before
    assert not Counter.objects.using("new").filter(name="after").exists()

    call_command("mirror_copy", verbosity=0)
    call_command("mirror_replay", "--from-start", "--until-caught-up", verbosity=0)
    call_command("mirror_verify", "--repair", "--recheck-delay", "0", verbosity=0)
    assert_mirrored(Counter)
    assert {identity for _, identity in checkpoints().values()} == {kinesis.identity()}


@both_databases
def test_checkpoints_without_identity_adopt_the_stream_once(kinesis: KinesisStream) -> None:
    """Checkpoints written before identities were kept go on where they were, and from
    then on belong to this stream: a recreated one is refused."""
    Counter.objects.bulk_create([Counter(name=f"c{i}") for i in range(10)])
    drain_and_replay()
    ShardCheckpoint.objects.update(stream_identity="")
    Counter.objects.create(name="more")
    drain_and_replay()
    assert_mirrored(Counter)
    assert {identity for _, identity in checkpoints().values()} == {kinesis.identity()}
    recreate(kinesis)
    assert "deleted and created again" in refused()


@both_databases
def test_checkpoint_past_the_streams_retention_is_refused(kinesis: KinesisStream) -> None:
    """Retention dropping records already replayed changes nothing; dropping the
    checkpoint's record (and unreplayed ones after it) stops replay before it applies
    anything, its checkpoint where it was. Plain records, one per event, so records
    before and after the checkpoint's can be named by position."""
    kinesis.aggregate = False
    Counter.objects.bulk_create([Counter(name=f"c{i}") for i in range(10)])
    drain_and_replay()
    ((first, _),) = checkpoints().values()
    Counter.objects.bulk_create([Counter(name=f"d{i}") for i in range(10)])
    relay.drain()
    ((_, records),) = stream_records(kinesis).items()
    sequences = [sequence for sequence, _ in records]
    with hooked(kinesis.client, *Trimmed(sequences[sequences.index(first) - 1]).hooks()):
        call_command("mirror_replay", "--until-caught-up", verbosity=0)
    assert_mirrored(Counter)
    ((second, _),) = checkpoints().values()

    Counter.objects.bulk_create([Counter(name=f"e{i}") for i in range(10)])
    relay.drain()
    ((_, records),) = stream_records(kinesis).items()
    sequences = [sequence for sequence, _ in records]
    with hooked(kinesis.client, *Trimmed(sequences[sequences.index(second) + 3]).hooks()):
        message = refused()
    assert f"no longer holds record {second}" in message and "retention" in message
    assert "--from-start" in message
    assert checkpoints()[next(iter(checkpoints()))][0] == second
    assert not Counter.objects.using("new").filter(name__startswith="e").exists()
