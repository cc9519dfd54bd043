"""Phases at run time: preconditions, forcing, every process following a change within
seconds, the router's answers in each phase, and what migrate creates on a target."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import connections
from django.test import override_settings

from django_mirror.config import conf
from django_mirror.core.events import GENERATION_STRIDE
from django_mirror.models import MirrorState, MismatchRecord, OutboxBatch, VerifyRun
from django_mirror.phases import transitions
from django_mirror.router import MirrorRouter
from tests.conftest import both_databases, drain_and_replay
from tests.testapp.models import Author, Book, Tag, Unmirrored

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def author_alone() -> Iterator[None]:
    """Author mirrored without the models tied to it, so it moves as a group of one
    (groups have tests of their own in tests/test_groups.py)."""
    base = settings.DJANGO_MIRROR
    alone = {"testapp.Author": base["MODELS"]["testapp.Author"]}
    with override_settings(DJANGO_MIRROR={**base, "MODELS": alone}):
        yield


def author_config() -> conf.ModelConfig:
    config = conf.config_for_label("testapp.Author")
    assert config is not None
    return config


def failed(phase: str) -> list[str]:
    return [p.name for p in transitions.preconditions(author_config(), phase) if not p.ok]


@both_databases
def test_moving_to_mirror_needs_replay_caught_up_and_a_recent_clean_verify(kinesis, author_alone):
    assert failed("mirror") == ["replay caught up", "clean verify"]
    with pytest.raises(transitions.PhaseRefused, match="replay has never run"):
        transitions.change_phase("testapp.Author", "mirror")
    Author.objects.create(name="ada")
    drain_and_replay()
    assert failed("mirror") == ["clean verify"]
    with pytest.raises(CommandError):  # the target lacks nothing yet, but make it differ
        Author.objects.using("new").all().delete()
        call_command("mirror_verify", "testapp.Author", "--recheck-delay", "0", stdout=StringIO())
    assert failed("mirror") == ["clean verify"]  # the last run found a difference
    call_command(
        "mirror_verify", "testapp.Author", "--recheck-delay", "0", "--repair", stdout=StringIO()
    )
    run = VerifyRun.objects.filter(model="testapp.Author").first()
    assert run is not None and run.clean and run.repaired == 1
    assert failed("mirror") == []
    state = transitions.change_phase("testapp.Author", "mirror", by="ops", reason="step 5")
    assert (state.phase, state.generation, state.forced) == ("mirror", 1, False)
    assert author_config().phase == "mirror"  # this process sees it at once


@both_databases
def test_a_refused_move_can_be_forced_only_with_a_reason():
    with pytest.raises(ValueError, match="needs a reason"):
        transitions.change_phase("testapp.Author", "mirror", force=True)
    assert not MirrorState.objects.exists()
    state = transitions.change_phase(
        "testapp.Author", "mirror", force=True, by="ops", reason="empty table, nothing to verify"
    )
    assert state.forced and state.reason == "empty table, nothing to verify"
    assert author_config().phase == "mirror"


@both_databases
def test_moving_to_promoted_needs_mirror_and_no_recent_confirmed_mismatch(author_alone):
    assert failed("promoted") == ["in mirror"]
    transitions.change_phase("testapp.Author", "mirror", force=True, reason="test")
    assert failed("promoted") == []
    MismatchRecord.objects.create(kind="read", status="confirmed", model="testapp.Author")
    assert failed("promoted") == ["no confirmed mismatch"]
    with pytest.raises(transitions.PhaseRefused, match="1 confirmed, undismissed mismatches"):
        transitions.change_phase("testapp.Author", "promoted")
    MismatchRecord.objects.update(status="resolved")
    transitions.change_phase("testapp.Author", "promoted", by="ops", reason="numbers are right")
    assert author_config().phase == "promoted"
    # Stepping back is always allowed: it is the rollback.
    assert failed("mirror") == [] and failed("capture") == []
    transitions.change_phase("testapp.Author", "mirror", by="ops", reason="roll back")
    assert author_config().phase == "mirror"


@both_databases
def test_each_change_raises_the_generation_and_so_every_later_version():
    Author.objects.create(name="before")
    before = max(e["version"] for b in OutboxBatch.objects.all() for e in b.events())
    transitions.change_phase("testapp.Author", "mirror", force=True, reason="test")
    transitions.change_phase("testapp.Author", "capture", by="ops")
    OutboxBatch.objects.all().delete()
    Author.objects.create(name="after")
    (after,) = [e["version"] for b in OutboxBatch.objects.all() for e in b.events()]
    assert after > before and after // GENERATION_STRIDE == 2
    assert conf.config_for_label("testapp.Book_tags") is not None


@both_databases
def test_another_process_follows_a_phase_change_within_five_seconds():
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import django, sys, time; django.setup()\n"
            "from django_mirror.config import conf\n"
            "from tests.testapp.models import Author\n"
            "print('ready', conf.model_config(Author).phase, flush=True)\n"
            "while conf.model_config(Author).phase != 'mirror': time.sleep(0.02)\n"
            "print('seen', flush=True)\n",
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "PYTHONPATH": str(ROOT),
            "MIRROR_TEST_USE_TEST_DB": "1",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline().split() == ["ready", "capture"]
        changed = time.monotonic()
        transitions.change_phase(
            "testapp.Author", "mirror", force=True, reason="cross-process test"
        )
        line = watcher.stdout.readline().strip()
        took = time.monotonic() - changed
        assert line == "seen", line + watcher.stdout.read()
        assert took < 5.0, took
    finally:
        watcher.kill()
        watcher.wait(10)


@pytest.mark.parametrize("phase", conf.PHASES)
def test_the_router_answers_by_phase(phase: str):
    router = MirrorRouter()
    models = dict(settings_models())
    models["testapp.Author"] = {**models["testapp.Author"], "phase": phase}
    with override_settings(DJANGO_MIRROR={**base_settings(), "MODELS": models}):
        expected = "new" if phase == "promoted" else None
        assert router.db_for_read(Author) == expected
        assert router.db_for_write(Author) == expected
        assert router.db_for_read(Book) is None  # still in capture
        assert router.db_for_read(Unmirrored) is None
        author, book = Author(name="a"), Book(title="b")
        author._state.db, book._state.db = "new", "default"
        assert router.allow_relation(author, book) is True
        user, thing = User(username="u"), Unmirrored(name="x")
        user._state.db, thing._state.db = "new", "default"
        assert router.allow_relation(user, thing) is None
        assert router.allow_migrate("new", "testapp", "author") is True
        assert router.allow_migrate("new", "testapp", "unmirrored") is False
        assert router.allow_migrate("new", "auth", "user") is False
        assert router.allow_migrate("new", "django_mirror", "rowversion") is True
        assert router.allow_migrate("new", "testapp") is False  # RunPython of another app
        assert router.allow_migrate("default", "auth", "user") is None


def settings_models() -> dict:
    from django.conf import settings

    return settings.DJANGO_MIRROR["MODELS"]


def base_settings() -> dict:
    from django.conf import settings

    return settings.DJANGO_MIRROR


@pytest.mark.django_db(databases=["default", "new"])
def test_migrate_created_exactly_the_mirrored_tables_and_django_mirrors_on_the_target():
    from django.apps import apps

    expected = {"django_migrations"}
    for model in conf.mirrored_models():
        expected.add(model._meta.concrete_model._meta.db_table)
    expected |= {m._meta.db_table for m in apps.get_app_config("django_mirror").get_models()}
    tables = set(connections["new"].introspection.table_names())
    tables.discard(Unmirrored._meta.db_table)  # test_dead_letters creates it when it mirrors it
    assert tables == expected
    assert "auth_user" in connections["default"].introspection.table_names()
    assert Tag._meta.db_table in tables and "testapp_book_tags" in tables


@both_databases
def test_mirror_phase_command_shows_checks_refuses_and_forces():
    out = StringIO()
    call_command("mirror_phase", "testapp.Author", stdout=out)
    text = out.getvalue()
    assert "testapp.Author: phase capture" in text and "to mirror: refused" in text
    with pytest.raises(CommandError, match="cannot move to 'mirror'"):
        call_command("mirror_phase", "testapp.Author", "mirror", stdout=StringIO())
    out = StringIO()
    call_command(
        "mirror_phase",
        "testapp.Author",
        "mirror",
        "--force",
        "--reason",
        "demo",
        "--json",
        stdout=out,
    )
    report = json.loads(out.getvalue())
    assert (report["phase"], report["forced"], report["generation"]) == ("mirror", True, 1)
    out = StringIO()
    call_command("mirror_status", "--model", "testapp.Author", "-v", "2", stdout=out)
    assert "mirror" in out.getvalue() and "(forced)" in out.getvalue()
    out = StringIO()
    call_command("mirror_status", "--json", stdout=out)
    row = next(r for r in json.loads(out.getvalue())["models"] if r["model"] == "testapp.Author")
    assert row["phase"] == "mirror" and row["last_verify"] is None


@both_databases
def test_promotion_starts_the_new_stores_keys_past_both_stores_and_rollback_likewise(author_alone):
    from django_mirror import paused

    with paused():  # rows reach the target with their keys set, as copy and replay do
        for _ in range(5):
            author = Author.objects.create(name="x")
            Author.objects.using("new").create(pk=author.pk, name="x")
    highest = Author.objects.order_by("-pk").first().pk  # type: ignore[union-attr]
    transitions.change_phase("testapp.Author", "mirror", force=True, reason="test")
    transitions.change_phase("testapp.Author", "promoted", force=True, reason="test")
    promoted = Author.objects.create(name="on the target")  # routed to "new"
    assert Author.objects.using("new").filter(pk=promoted.pk).exists()
    assert promoted.pk > highest + 50_000
    transitions.change_phase("testapp.Author", "mirror", by="ops", reason="roll back")
    back = Author.objects.create(name="on the source again")
    assert back.pk > promoted.pk
    assert Author.objects.using("default").filter(pk=back.pk).exists()
