"""Records replay cannot apply land in the dead-letter table with a readable reason,
replay goes on around them, and the admin shows them (redacted) and retries them."""

from __future__ import annotations

import copy
import json
from io import StringIO
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.db import connections
from django.test import Client, override_settings

from django_mirror.core.events import Event
from django_mirror.models import DeadLetter, ShardCheckpoint
from django_mirror.pipeline import relay
from django_mirror.streams import KinesisStream
from tests.conftest import assert_mirrored, both_databases
from tests.faults import stream_records
from tests.testapp.models import Author, Book, Counter, Unmirrored

SECRET_ISBN = "978-SECRET-4242"
GARBAGE = b"\x00\xff\xfe not an event {"
CHANGELIST = "/admin/django_mirror/deadletter/"


def with_unmirrored() -> dict[str, Any]:
    """The test settings, plus ``testapp.Unmirrored`` mirrored like the rest."""
    config = copy.deepcopy(settings.DJANGO_MIRROR)
    config["MODELS"]["testapp.Unmirrored"] = settings.MIRRORED
    return config


def book_event(pk: int, **row: Any) -> bytes:
    """A hand-made Book event, as another producer (or a newer schema) might write it."""
    image = {"id": pk, "author_id": None, "editor_id": None, "title": "t", "pages": 1}
    return Event(
        model="testapp.Book", op="upsert", pk=pk, version=1, row={**image, **row}
    ).to_json()


def put_raw(stream: KinesisStream, data: bytes, key: str = "raw") -> None:
    stream.client.put_record(StreamName=stream.name, Data=data, PartitionKey=key)


def enforces_length() -> bool:
    return connections["new"].vendor in ("postgresql", "mysql")


def stream_with_bad_records(stream: KinesisStream) -> dict[str, bytes]:
    """Good writes, then every kind of bad record, then good writes again, on one shard."""
    ada = Author.objects.create(name="Ada")
    Counter.objects.bulk_create([Counter(name=f"before{i}") for i in range(5)])
    relay.drain()
    bad = {
        "garbage": GARBAGE,
        "null": book_event(9001, author_id=ada.pk, title=None, isbn=SECRET_ISBN),
    }
    if enforces_length():
        bad["long"] = book_event(9002, author_id=ada.pk, title="x" * 500, isbn=SECRET_ISBN)
    for name, data in bad.items():
        put_raw(stream, data, key=name)
    with override_settings(DJANGO_MIRROR=with_unmirrored()):
        Unmirrored.objects.create(name="orphan")
        relay.drain()
    Book.objects.create(author=ada, title="Good", isbn=SECRET_ISBN)
    Counter.objects.bulk_create([Counter(name=f"after{i}") for i in range(5)])
    Counter.objects.filter(name="before0").delete()
    relay.drain()
    return bad


def replay_json(*args: str) -> dict[str, Any]:
    out = StringIO()
    call_command("mirror_replay", "--until-caught-up", "--json", *args, stdout=out)
    return json.loads(out.getvalue())


def letter(reason: str) -> DeadLetter:
    return DeadLetter.objects.get(reason__contains=reason)


@both_databases
def test_bad_records_are_dead_lettered_and_replay_goes_on(kinesis: KinesisStream) -> None:
    bad = stream_with_bad_records(kinesis)
    stats = replay_json("--batch-size", "4")
    total = sum(len(records) for records in stream_records(kinesis).values())
    assert stats["read"] == total and stats["dead_letters"] == len(bad) + 1
    assert_mirrored(Author, Book, Counter)  # the good events around the bad ones
    assert not Book.objects.using("new").filter(pk__in=[9001, 9002]).exists()

    garbage = letter("undecodable record")
    assert bytes(garbage.payload) == GARBAGE and garbage.sequence_number and garbage.shard_id
    unknown = letter("testapp.Unmirrored is not a mirrored model here")
    assert unknown.model == "testapp.Unmirrored" and unknown.pk_value
    null = DeadLetter.objects.get(pk_value="9001")
    assert null.model == "testapp.Book"
    assert "refused the event" in null.reason and "IntegrityError" in null.reason
    assert "title" in null.reason.lower()
    if "long" in bad:
        long = DeadLetter.objects.get(pk_value="9002")
        assert "refused the event" in long.reason and "DataError" in long.reason
    assert DeadLetter.objects.count() == len(bad) + 1
    assert not DeadLetter.objects.filter(resolved_at__isnull=False).exists()

    # The checkpoint went past them: a second run reads nothing and adds no letter.
    assert ShardCheckpoint.objects.get().sequence_number
    assert replay_json()["read"] == 0
    assert DeadLetter.objects.count() == len(bad) + 1


@both_databases
def test_admin_lists_redacts_and_retries(kinesis: KinesisStream, admin_client: Client) -> None:
    """The pages render without the redacted ISBN; retry applies a record once it can be
    applied and marks it resolved, and counts a failed retry without losing the record."""
    stream_with_bad_records(kinesis)
    call_command("mirror_replay", "--until-caught-up", verbosity=0)

    listing = admin_client.get(CHANGELIST)
    assert listing.status_code == 200
    assert SECRET_ISBN not in listing.content.decode()
    for dead in DeadLetter.objects.all():
        page = admin_client.get(f"{CHANGELIST}{dead.pk}/change/")
        assert page.status_code == 200, dead
        html = page.content.decode()
        assert SECRET_ISBN not in html, f"redacted isbn shown for {dead}"
        if dead.model == "testapp.Book":
            assert "&lt;redacted&gt;" in html

    unknown = letter("is not a mirrored model here")
    with override_settings(DJANGO_MIRROR=with_unmirrored()):
        # Mirroring a model means creating its table on the target too.
        if Unmirrored._meta.db_table not in connections["new"].introspection.table_names():
            with connections["new"].schema_editor() as editor:
                editor.create_model(Unmirrored)
        response = admin_client.post(
            CHANGELIST, {"action": "retry", "_selected_action": [unknown.pk]}
        )
        assert response.status_code == 302
        unknown.refresh_from_db()
        assert unknown.resolved_at is not None
        assert_mirrored(Unmirrored)

    null = DeadLetter.objects.get(pk_value="9001")
    response = admin_client.post(
        CHANGELIST, {"action": "retry", "_selected_action": [null.pk]}, follow=True
    )
    assert response.status_code == 200
    assert "failed again" in response.content.decode()
    null.refresh_from_db()
    assert null.resolved_at is None and null.attempts == 2
    assert "title" in null.reason.lower()
    assert SECRET_ISBN not in null.reason
