"""Capture overhead: what mirroring adds to the user's own writes.

``save()`` of one new row in its own committed transaction, and ``bulk_create`` of
1,000 rows in one transaction, on the mirrored ``Follow`` against ``PlainFollow``,
the same table shape unmirrored. Shipping is off (``RELAY["ON_COMMIT"] = "off"``):
in production it runs in ``mirror_relay``, another process, so only the work done
inside the user's transaction (building the row image, the outbox insert) is measured.
"""

from __future__ import annotations

import datetime as dt
import itertools
import statistics
from collections.abc import Callable
from typing import Any

from benchmarks.common import Outcome, Row, interleaved, log, median_ratio, spread

SAVE_TARGET = 1.5
BULK_TARGET = 1.2


def run(db: str, quick: bool) -> Outcome:
    from django.db import transaction
    from django.db.models import Sum

    from benchmarks.benchapp.models import Follow, PlainFollow
    from django_mirror import conf
    from django_mirror.models import OutboxBatch

    assert conf.get_settings().relay["ON_COMMIT"] == "off"
    assert conf.model_config(Follow) is not None and conf.model_config(PlainFollow) is None

    # Many short alternating samples: a median over dozens of rounds shrugs off the
    # scheduling hiccups of a shared machine that a few long samples would absorb.
    rounds = 8 if quick else 80
    budget = 4 if quick else 15
    saves = 20 if quick else 40
    bulks = 1
    bulk_rows = 1_000
    numbers = itertools.count(1)
    now = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    captured = [0]

    def build(model: type[Any], count: int) -> list[Any]:
        return [
            model(user_id=n, channel_id=n % 1_000, created_at=now, origin="web")
            for n in itertools.islice(numbers, count)
        ]

    def take_outbox() -> None:
        """Count the captured events and empty the outbox, as the relay would meanwhile."""
        captured[0] += OutboxBatch.objects.aggregate(n=Sum("count"))["n"] or 0
        OutboxBatch.objects.all().delete()

    def prepare(model: type[Any], batches: int, size: int) -> Callable[[], list[list[Any]]]:
        def build_batches() -> list[list[Any]]:
            if model is Follow:
                take_outbox()
            return [build(model, size) for _ in range(batches)]

        return build_batches

    def timed_saves(batches: list[list[Any]]) -> None:
        for obj in batches[0]:
            with transaction.atomic():
                obj.save()

    def timed_bulk(batches: list[list[Any]]) -> None:
        model = type(batches[0][0])
        for objs in batches:
            with transaction.atomic():
                model.objects.bulk_create(objs)

    log(f"capture: save(), up to {rounds} rounds of {saves} saves per model")
    save_times = interleaved(
        [(prepare(Follow, 1, saves), timed_saves), (prepare(PlainFollow, 1, saves), timed_saves)],
        rounds,
        budget=budget,
    )
    log(f"capture: bulk_create(), up to {rounds} rounds of {bulks} x {bulk_rows} rows per model")
    bulk_times = interleaved(
        [
            (prepare(Follow, bulks, bulk_rows), timed_bulk),
            (prepare(PlainFollow, bulks, bulk_rows), timed_bulk),
        ],
        rounds,
        budget=budget,
    )
    take_outbox()
    written = Follow.objects.count()
    assert captured[0] == written, f"{captured[0]} events captured for {written} rows written"

    save_ratios = [a / b for a, b in zip(*save_times, strict=True)]
    bulk_ratios = [a / b for a, b in zip(*bulk_times, strict=True)]
    save_ratio = median_ratio(*save_times)
    bulk_ratio = median_ratio(*bulk_times)
    save_us = [statistics.median(t) / saves * 1e6 for t in save_times]
    bulk_ms = [statistics.median(t) / bulks * 1e3 for t in bulk_times]

    outcome = Outcome()
    outcome.rows.append(
        Row(
            "capture: save() mirrored / unmirrored",
            db,
            f"{save_ratio:.2f}x",
            f"<= {SAVE_TARGET}x",
            save_ratio <= SAVE_TARGET,
            save_ratio,
        )
    )
    outcome.rows.append(
        Row(
            "capture: bulk_create(1,000) mirrored / unmirrored",
            db,
            f"{bulk_ratio:.2f}x",
            f"<= {BULK_TARGET}x",
            bulk_ratio <= BULK_TARGET,
            bulk_ratio,
        )
    )
    outcome.notes.append(
        f"capture [{db}]: save() {save_us[0]:.0f} us mirrored vs {save_us[1]:.0f} us "
        f"unmirrored ({len(save_ratios)} rounds, ratios {spread(save_ratios)}); "
        f"bulk_create(1,000) {bulk_ms[0]:.1f} ms vs {bulk_ms[1]:.1f} ms "
        f"({len(bulk_ratios)} rounds, ratios {spread(bulk_ratios)}); every write captured "
        f'({captured[0]:,} events); shipping not measured (RELAY["ON_COMMIT"] = "off").'
    )
    return outcome
