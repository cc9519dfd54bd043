"""Several replay processes on one stream, for real (subprocesses on a moto server):
they split the shards, say who holds which lease until when, hand a dead process's
shards over, and a one-off ``--until-caught-up`` waits for the others instead of idling."""

from __future__ import annotations

import signal
import socket
import time
from collections import Counter as Tally
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from django_mirror.models import ShardCheckpoint
from django_mirror.pipeline import relay
from django_mirror.streams import KinesisStream
from tests.conftest import assert_mirrored, both_databases
from tests.faults import configured_stream, unique_stream_name
from tests.test_crash import Command
from tests.testapp.models import Counter

SHARDS = 4


@pytest.fixture
def four_shards(moto_server: str) -> Iterator[KinesisStream]:
    with configured_stream(
        endpoint_url=moto_server, stream_name=unique_stream_name(), shard_count=SHARDS
    ) as stream:
        yield stream


def holders() -> dict[int, int]:
    """Shards per process (pid) holding a lease on them."""
    owners = ShardCheckpoint.objects.filter(consumer="*").values_list("lease_owner", flat=True)
    return dict(Tally(int(owner.split(":")[1]) for owner in owners if owner))


def saved_times() -> dict[str, object]:
    return dict(ShardCheckpoint.objects.values_list("shard_id", "updated_at"))


def write(prefix: str, count: int) -> None:
    Counter.objects.bulk_create([Counter(name=f"{prefix}{i}") for i in range(count)])
    relay.drain()


@both_databases
def test_two_replays_split_the_shards_and_show_their_leases(
    four_shards: KinesisStream, tmp_path: Path
) -> None:
    write("a", 200)
    first = Command(four_shards, tmp_path, "mirror_replay", "--batch-size", "20")
    second = Command(four_shards, tmp_path, "mirror_replay", "--batch-size", "20")
    pids = first.process.pid, second.process.pid
    first.wait_until(lambda: holders() == dict.fromkeys(pids, SHARDS // 2))
    assert second.process.poll() is None, second.output()

    out = StringIO()
    call_command("mirror_status", stdout=out)
    leases = [line for line in out.getvalue().splitlines() if line.startswith("replay * ")]
    assert len(leases) == SHARDS
    host = socket.gethostname()
    for pid in pids:
        assert sum(f"(lease: {host}:{pid} until " in line for line in leases) == SHARDS // 2

    # A one-off run while both hold every lease: it waits for their checkpoints to
    # reach the end of what was written before it started, saying who replays.
    write("b", 100)
    one_off = Command(four_shards, tmp_path, "mirror_replay", "--until-caught-up")
    assert one_off.finish(60) == 0, one_off.output()
    assert_mirrored(Counter)
    assert "0 events read" in one_off.output()
    assert f"replayed by {host}:{pids[0]} (lease until " in one_off.output()
    assert f"replayed by {host}:{pids[1]} (lease until " in one_off.output()

    # Idle, the survivor renews its checkpoints' saved time and prints nothing new.
    assert first.kill(signal.SIGKILL) == -signal.SIGKILL
    second.wait_until(lambda: holders() == {pids[1]: SHARDS}, timeout=30)
    write("c", 100)
    # Every row, not only the last: they lie on four shards, applied in any order.
    second.wait_until(
        lambda: Counter.objects.using("new").filter(name__startswith="c").count() == 100
    )
    time.sleep(1.5)  # the line telling the last change
    lines, times = second.output().count("\n"), saved_times()
    time.sleep(3)
    assert second.output().count("\n") == lines, second.output()
    assert all(saved > times[shard] for shard, saved in saved_times().items())
    assert second.kill(signal.SIGTERM) == 0, second.output()
    assert_mirrored(Counter)
