"""The admin's phase controls: the models and their phases, the confirmation page with
the preconditions, forcing with a reason, and who may move what."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from django_mirror.config import conf
from django_mirror.models import MirrorState
from tests.conftest import both_databases

CHANGELIST = "/admin/django_mirror/mirrorstate/"
MOVE = "/admin/django_mirror/mirrorstate/move/"


@both_databases
def test_the_changelist_lists_every_mirrored_model_with_its_phase(admin_client: Client):
    html = admin_client.get(CHANGELIST).content.decode()
    for config in conf.configs():
        if config.owner is None:
            assert config.label in html
    assert "Move a model to another phase" in html


@both_databases
def test_a_move_shows_its_preconditions_and_is_refused_unless_forced(admin_client: Client):
    form = {"model": "testapp.Author", "phase": "mirror", "reason": ""}
    page = admin_client.post(MOVE, {**form, "check": "1"}).content.decode()
    assert "testapp.Author: capture &rarr; mirror" in page
    assert "replay has never run" in page and "no mirror_verify yet" in page
    assert "Confirm the move" in page

    page = admin_client.post(MOVE, {**form, "confirm": "1"}, follow=True).content.decode()
    assert "cannot move to" in page
    assert not MirrorState.objects.exists()

    page = admin_client.post(MOVE, {**form, "force": "on", "confirm": "1"}).content.decode()
    assert "Say why the preconditions may be overridden." in page
    assert not MirrorState.objects.exists()

    forced = {**form, "force": "on", "reason": "empty table", "confirm": "1"}
    response = admin_client.post(MOVE, forced)
    assert response.status_code == 302 and response["Location"] == CHANGELIST
    state = MirrorState.objects.get()
    assert (state.model, state.phase, state.changed_by, state.reason, state.forced) == (
        "testapp.Author",
        "mirror",
        "admin",
        "empty table",
        True,
    )
    assert conf.config_for_label("testapp.Author").phase == "mirror"  # type: ignore[union-attr]


@both_databases
def test_a_step_back_needs_no_precondition(admin_client: Client):
    forced = {"model": "testapp.Author", "phase": "mirror", "force": "on", "reason": "test"}
    admin_client.post(MOVE, {**forced, "confirm": "1"})
    back = {"model": "testapp.Author", "phase": "capture", "reason": "roll back"}
    page = admin_client.post(MOVE, {**back, "check": "1"}).content.decode()
    # Only the group's: its other models are in capture, so the step back rejoins them.
    assert "no tied model stays in another phase" in page and 'class="failed"' not in page
    assert admin_client.post(MOVE, {**back, "confirm": "1"}).status_code == 302
    assert MirrorState.objects.get().phase == "capture"


@both_databases
def test_only_staff_allowed_to_change_phases_may_move_and_nobody_deletes():
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_mirrorstate"))
    client = Client()
    client.force_login(viewer)
    assert client.get(CHANGELIST).status_code == 200
    assert "Move a model" not in client.get(CHANGELIST).content.decode()
    assert client.get(MOVE).status_code == 403
    mover = User.objects.create_user("mover", password="pw", is_staff=True)
    mover.user_permissions.add(Permission.objects.get(codename="change_mirrorstate"))
    client.force_login(mover)
    assert client.get(MOVE + "?model=testapp.Author").status_code == 200
    assert Client().get(MOVE).status_code == 302  # anonymous: to the login page


@pytest.mark.django_db
def test_run_time_states_cannot_be_added_or_deleted_directly(admin_client: Client):
    state = MirrorState.objects.create(model="testapp.Author", phase="capture", generation=3)
    assert admin_client.get(CHANGELIST + "add/").status_code == 403
    assert admin_client.get(f"{CHANGELIST}{state.pk}/delete/").status_code == 403
