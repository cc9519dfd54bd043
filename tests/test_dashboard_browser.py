"""The dashboard in a real headless Chromium: log in through the admin's form, open the
page over a few models' worth of data, and keep a screenshot (``docs/img/dashboard.png``
when ``MIRROR_SAVE_SCREENSHOT=1``; ``make screenshot`` does that)."""

from __future__ import annotations

import datetime as dt
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import override_settings
from django.utils import timezone
from pytest_django.live_server_helper import LiveServer

from django_mirror.models import DeadLetter, MismatchRecord, ShardCheckpoint, VerifyRun
from django_mirror.observability import stats
from tests.conftest import both_databases
from tests.test_dashboard import DASHBOARD, fresh_stats  # noqa: F401 (a fixture used below)
from tests.testapp.models import Author, Book, Shelf, Tag

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DOCS_IMAGE = Path(__file__).resolve().parent.parent / "docs" / "img" / "dashboard.png"

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists() or not CHROMEDRIVER.exists(),
        reason="needs /usr/bin/chromium and /usr/bin/chromedriver (make browser installs them)",
    ),
]

PHASES = {
    "testapp.Author": "mirror",
    "testapp.Book": "mirror",
    "testapp.BigKey": "off",
    "testapp.Counter": "promoted",
}


@pytest.fixture
def live_server() -> Iterator[LiveServer]:
    """pytest-django's live server, serving the admin's CSS and scripts too.

    The test settings set no ``STATIC_URL`` and leave ``django.contrib.staticfiles`` out,
    so the stock fixture's handler fails every request; this one serves the apps' static
    files as ``runserver`` would. pytest-django still enables the server's settings and
    the transactional database for the test, as for its own fixture.
    """
    from django.contrib.staticfiles.handlers import StaticFilesHandler

    with override_settings(STATIC_URL="/static/"):
        server = LiveServer("localhost", start=False)
        server.thread.static_handler = StaticFilesHandler
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium through chromedriver, with a throwaway profile."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def seed() -> None:
    """A migration in progress: two models mirrored live, the rest capturing, some
    events waiting, a few mismatches, replay a couple of seconds behind."""
    now = timezone.now()
    authors = [Author.objects.create(name=name) for name in ("Ann", "Bob", "Cy")]
    Book.objects.bulk_create([Book(author=authors[i % 3], title=f"Book {i}") for i in range(14)])
    Tag.objects.bulk_create([Tag(name=f"tag {i}") for i in range(42)])
    Shelf.objects.create(name="Fiction")

    rng = random.Random(4)
    traffic = {
        # label: (captured, replayed, compared, matched, source ms, target ms)
        "testapp.Author": (2150, 2090, 1240, 1238, 1.6, 1.2),
        "testapp.Book": (640, 655, 310, 310, 3.1, 2.4),
        "testapp.Book_tags": (220, 215, 0, 0, 0, 0),
        "testapp.Tag": (96, 54, 0, 0, 0, 0),
        "testapp.Shelf": (12, 11, 0, 0, 0, 0),
        "testapp.Counter": (480, 480, 0, 0, 0, 0),
    }
    for label, (captured, replayed, compared, matched, source_ms, target_ms) in traffic.items():
        stats.add(label, "captured", captured)
        stats.add(label, "replayed", replayed)
        if compared:
            stats.add(label, "read.compared", compared)
            stats.add(label, "read.match", matched)
            for _ in range(compared):
                stats.observe(label, "source", rng.lognormvariate(0, 0.6) * source_ms)
                stats.observe(label, "target", rng.lognormvariate(0, 0.8) * target_ms)
    stats.flush()

    def mismatch(label: str, kind: str, minutes: int, status: str = "confirmed") -> None:
        MismatchRecord.objects.create(
            created_at=now - dt.timedelta(minutes=minutes),
            kind=kind,
            status=status,
            model=label,
            pk_value=str(minutes),
            diff={"kind": "changed", "fields": {"name": ["a", "b"]}},
        )

    mismatch("testapp.Author", "read", 12)
    mismatch("testapp.Author", "read", 300)
    mismatch("testapp.Author", "read", 900)
    mismatch("testapp.Book", "write", 40, status="suspected")
    mismatch("testapp.Book", "write", 600, status="resolved")
    mismatch("testapp.Shelf", "verify", 1300)

    for shard, behind in (("shardId-000000000000", 850), ("shardId-000000000001", 2300)):
        ShardCheckpoint.objects.create(
            consumer="mirror-replay",
            stream="mirror-ops",
            shard_id=shard,
            sequence_number="49650000000000000000000000000000000000000000000000000000",
            millis_behind=behind,
        )
    for label, hours, differences in (
        ("testapp.Author", 2, 0),
        ("testapp.Book", 5, 0),
        ("testapp.Book_tags", 5, 0),
        ("testapp.Counter", 75, 0),
        ("testapp.Shelf", 30, 0),
        ("testapp.Tag", 0.3, 3),
    ):
        VerifyRun.objects.create(
            model=label,
            started_at=now - dt.timedelta(hours=hours, minutes=4),
            finished_at=now - dt.timedelta(hours=hours),
            rows=5000,
            differences=differences,
        )
    DeadLetter.objects.create(
        model="testapp.Book",
        pk_value="7",
        reason="IntegrityError: FOREIGN KEY constraint failed",
        payload=b"{}",
    )


@both_databases
@pytest.mark.usefixtures("fresh_stats")
def test_the_dashboard_renders_in_a_real_browser(
    live_server: LiveServer, browser: Any, tmp_path: Path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    raw = settings.DJANGO_MIRROR
    models = {
        label: {**opts, "phase": PHASES.get(label, opts.get("phase", "capture"))}
        for label, opts in raw["MODELS"].items()
    }
    models["testapp.Author"]["shadow_read_rate"] = 0.05
    models["testapp.Book"]["shadow_read_rate"] = 0.05
    User.objects.create_superuser("ops", "ops@example.com", "correct horse")
    with override_settings(DJANGO_MIRROR={**raw, "MODELS": models}):
        seed()
        browser.get(f"{live_server.url}/admin/login/?next={DASHBOARD}")
        browser.find_element(By.NAME, "username").send_keys("ops")
        browser.find_element(By.NAME, "password").send_keys("correct horse")
        browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        wait = WebDriverWait(browser, 20)
        table = wait.until(
            expected_conditions.visibility_of_element_located((By.ID, "mirror-dashboard"))
        )
        assert browser.current_url == f"{live_server.url}{DASHBOARD}"
        text = table.text
        for label in ("testapp.Author", "testapp.Book", "testapp.Book_tags", "testapp.Counter"):
            assert label in text
        author = browser.find_element(By.CSS_SELECTOR, 'tr[data-model="testapp.Author"]')
        assert "mirror" in author.text
        lag = browser.find_element(By.ID, "mirror-replay-lag").text
        assert "2.3 s" in lag

        path = tmp_path / "dashboard.png"
        # The whole page in one image: grow the window by what the viewport lacks.
        height, viewport, outer = browser.execute_script(
            "return [document.documentElement.scrollHeight, window.innerHeight, window.outerHeight]"
        )
        if height > viewport:
            browser.set_window_size(1400, int(height + outer - viewport))
        assert browser.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    if os.environ.get("MIRROR_SAVE_SCREENSHOT") == "1":
        DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_IMAGE)
