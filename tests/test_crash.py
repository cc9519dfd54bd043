"""Relay and replay killed for real, in subprocesses sharing the test databases and a moto
server over HTTP: SIGKILL loses nothing and a restart converges; SIGTERM finishes the
batch, checkpoints exactly what it applied, and exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.db.models import F

from django_mirror.models import OutboxBatch, RowVersion, ShardCheckpoint
from django_mirror.pipeline import relay
from django_mirror.pipeline.replay import Replayer
from django_mirror.streams import KinesisStream
from django_mirror.streams.kinesis import MIN_AGGREGATE_BYTES
from tests.conftest import assert_mirrored, both_databases
from tests.faults import configured_stream, stream_records, unique_stream_name
from tests.testapp.models import Counter

ROOT = Path(__file__).resolve().parent.parent
ROWS = 2000


@pytest.fixture
def http_stream(moto_server: str) -> Iterator[KinesisStream]:
    """A stream of this test's own on the shared moto server, configured for this process.
    Small aggregates: many records, so a replay is stopped between two of them, and a
    checkpoint between aggregated records is what is checked."""
    with configured_stream(
        endpoint_url=moto_server,
        stream_name=unique_stream_name(),
        aggregate_max_bytes=MIN_AGGREGATE_BYTES,
    ) as stream:
        yield stream


class Command:
    """``python -m django <args>`` on this test run's databases and stream."""

    def __init__(self, stream: KinesisStream, tmp_path: Path, *args: str, **extra_env: str) -> None:
        env = {
            **os.environ,
            **extra_env,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "PYTHONPATH": str(ROOT),
            "MIRROR_TEST_USE_TEST_DB": "1",
            "MIRROR_STREAM_ENDPOINT": stream.endpoint_url or "",
            "MIRROR_STREAM_NAME": stream.name,
        }
        self.log = tmp_path / f"{args[0]}-{time.monotonic_ns()}.log"
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "django", *args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text()

    def wait_until(self, condition: Callable[[], bool], timeout: float = 60.0) -> None:
        """Poll ``condition`` while the process runs; fail if it ends or time runs out."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(f"process ended ({self.process.returncode}) early:\n{self.output()}")
            if time.monotonic() > deadline:
                self.process.kill()
                pytest.fail(f"timed out waiting:\n{self.output()}")
            time.sleep(0.005)

    def finish(self, timeout: float = 120.0) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"process did not finish:\n{self.output()}")

    def kill(self, signum: int) -> int:
        self.process.send_signal(signum)
        return self.finish(30)


def checkpoint() -> int:
    """The replay checkpoint of the single shard as a number (0 before the first batch)."""
    sequence = (
        ShardCheckpoint.objects.filter(consumer="*")
        .values_list("sequence_number", flat=True)
        .first()
    )
    return int(sequence or 0)


def versions_up_to(stream: KinesisStream, sequence: int) -> dict[str, int]:
    """Newest version per row among the records the stream holds up to ``sequence``."""
    (records,) = stream_records(stream).values()
    newest: dict[str, int] = {}
    for seq, data in records:
        event = json.loads(data)
        if int(seq) <= sequence:
            key = str(event["pk"])
            newest[key] = max(newest.get(key, -1), event["version"])
    return newest


def last_sequence(stream: KinesisStream) -> int:
    (records,) = stream_records(stream).values()
    return int(records[-1][0])


def target_versions() -> dict[str, int]:
    """What the target has durably applied, per row."""
    rows = RowVersion.objects.using("new").filter(model="testapp.counter")
    return dict(rows.values_list("pk_value", "version"))


def create_rows() -> None:
    for start in range(0, ROWS, 500):
        Counter.objects.bulk_create([Counter(name=f"c{i}") for i in range(start, start + 500)])


@both_databases
def test_replay_killed_mid_batch_restarts_and_converges(
    http_stream: KinesisStream, tmp_path: Path
) -> None:
    create_rows()
    some = list(Counter.objects.order_by("pk").values_list("pk", flat=True)[:300])[::3]
    Counter.objects.filter(pk__in=some).update(value=F("value") + 5)
    Counter.objects.filter(name__endswith="7").delete()
    relay.drain()
    args = ("mirror_replay", "--until-caught-up", "--batch-size", "50")
    replay = Command(http_stream, tmp_path, *args)
    replay.wait_until(lambda: checkpoint() > 0)
    assert replay.kill(signal.SIGKILL) == -signal.SIGKILL
    reached = checkpoint()
    assert reached < last_sequence(http_stream), "not killed mid-way"
    applied = target_versions()
    for pk, version in versions_up_to(http_stream, reached).items():
        assert applied.get(pk, -1) >= version, f"checkpoint passed unapplied row {pk}"

    restart = Command(http_stream, tmp_path, "mirror_replay", "--until-caught-up")
    assert restart.finish() == 0, restart.output()
    assert_mirrored(Counter)


@both_databases
def test_replay_sigterm_finishes_the_batch_and_exits_cleanly(
    http_stream: KinesisStream, tmp_path: Path
) -> None:
    create_rows()
    relay.drain()
    replay = Command(http_stream, tmp_path, "mirror_replay", "--batch-size", "50")
    replay.wait_until(lambda: checkpoint() > 0)
    assert replay.kill(signal.SIGTERM) == 0, replay.output()
    reached = checkpoint()
    assert reached < last_sequence(http_stream), "stopped only once caught up"
    assert target_versions() == versions_up_to(http_stream, reached)  # exactly what it applied
    assert not ShardCheckpoint.objects.exclude(lease_owner="").exists()  # lease handed back
    Replayer().run(until_caught_up=True)
    assert_mirrored(Counter)


@both_databases
@pytest.mark.usefixtures("relay_off")  # the batches wait for the relay under test alone
def test_relay_killed_mid_way_loses_nothing(http_stream: KinesisStream, tmp_path: Path) -> None:
    for start in range(0, 2000, 10):
        Counter.objects.bulk_create([Counter(name=f"c{i}") for i in range(start, start + 10)])
    batches = OutboxBatch.objects.count()
    every_event = {event["id"] for batch in OutboxBatch.objects.all() for event in batch.events()}
    # The killed relay's claims hold for its lease; a short one keeps the test short.
    lease = {"MIRROR_TEST_LEASE_SECONDS": "2"}
    shipper = Command(http_stream, tmp_path, "mirror_relay", "--batch-size", "2", **lease)
    shipper.wait_until(lambda: OutboxBatch.objects.count() < batches)
    assert shipper.kill(signal.SIGKILL) == -signal.SIGKILL
    assert OutboxBatch.objects.exists(), "not killed mid-way"
    waiting = {event["id"] for batch in OutboxBatch.objects.all() for event in batch.events()}
    shipped = {
        json.loads(data)["id"]
        for records in stream_records(http_stream).values()
        for _, data in records
    }
    assert every_event == waiting | shipped

    again = Command(http_stream, tmp_path, "mirror_relay", "--once", **lease)
    assert again.finish() == 0, again.output()
    assert relay.backlog() == 0
    Replayer().run(until_caught_up=True)
    assert_mirrored(Counter)
