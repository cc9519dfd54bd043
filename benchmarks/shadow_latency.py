"""Shadow-read latency: what sampling every request costs the example project's requests.

Two copies of the example project serve HTTP on 127.0.0.1 from their own processes
(Django's threaded WSGI server, what ``runserver`` runs, without autoreload), over the
same two databases, with ``follows`` in phase "mirror" and the target holding the very
rows of the source (seeded with capture paused, then ``mirror_copy``). They differ in
one setting only: ``shadow_read_rate`` 1.0 in one, 0.0 in the other. This process is
the client: it requests a channel's followers page (three reads of mirrored models: the
channel, a page of 50 follows, their count) over a kept-alive socket, one request at a
time, alternating blocks between the two servers (A B, B A, ...) so the machine's noise
falls on both alike. The sampled server's shadow pool runs throughout: its comparisons
compete with the requests for the interpreter lock and the CPU, as in production.

Each figure is the ratio of the sampled server's latency quantile to the other's, over
every kept request of each side:

- **paced**, with the targets: a request every 3 times the unsampled server's median
  latency, so that server is about a third busy, as a production process is meant to
  be; the pool has time to catch up between requests.
- **back to back**, reported: each request sent as soon as the last one answered. The
  server is saturated, so every comparison's CPU comes straight out of the requests:
  this is the cost in capacity of shadowing every read.

Before each block the client waits until the sampled server's pool is idle (untimed),
so one block's comparisons are never charged to the other server's block. Both servers
keep their database connections (``CONN_MAX_AGE``), as a production deployment does; a
new PostgreSQL connection per request would swamp the difference.
"""

from __future__ import annotations

import gc
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from benchmarks.common import Outcome, Row, log, pg_conninfo

P50_TARGET = 1.05
P95_TARGET = 1.2

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "example_project"
#: Requests under this prefix are the benchmark's own, answered before Django sees them.
CONTROL = "/__bench__/"
CHANNELS = 40
FOLLOWERS = 150
USERS = 3000
#: Paced requests are sent every LOAD_GAP times the unsampled server's median latency.
LOAD_GAP = 3


# --- the example project's side: seeding and serving -----------------------------------


def seed() -> None:
    """Migrate both stores, write users, channels and follows on the source with
    capture paused, and copy them to the target with ``mirror_copy``."""
    import io

    import django
    from django.core.management import call_command

    django.setup()
    from follows.models import Channel, Follow, Tag, User

    from django_mirror import paused

    for alias in ("default", "new"):
        call_command("migrate", database=alias, verbosity=0, interactive=False)
    rng = random.Random(2024)
    with paused():
        users = User.objects.bulk_create(
            [User(username=f"viewer{n}", display_name=f"Viewer {n}") for n in range(USERS)]
        )
        Tag.objects.bulk_create([Tag(name=f"tag{n}") for n in range(10)])
        channels = Channel.objects.bulk_create(
            [
                Channel(owner=rng.choice(users), name=f"channel{n}", follower_count=FOLLOWERS)
                for n in range(CHANNELS)
            ]
        )
        Follow.objects.bulk_create(
            [
                Follow(user=user, channel=channel, notifications=rng.random() < 0.7)
                for channel in channels
                for user in rng.sample(users, FOLLOWERS)
            ]
        )
    call_command("mirror_copy", stdout=io.StringIO())
    for model in (User, Channel, Follow):
        counts = [model.objects.using(alias).count() for alias in ("default", "new")]
        assert counts[0] == counts[1] > 0, (model, counts)
    print(json.dumps({"channels": [c.pk for c in channels]}), flush=True)


def serve() -> None:
    """Serve the example project on a free port (printed first) until killed."""
    import logging

    import django
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
    from django.core.wsgi import get_wsgi_application

    django.setup()
    logging.getLogger("django.server").setLevel(logging.WARNING)  # no line per request
    application = get_wsgi_application()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if not path.startswith(CONTROL):
            return application(environ, start_response)  # type: ignore[no-any-return]
        body = json.dumps(control(path[len(CONTROL) :])).encode()
        start_response(
            "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return [body]

    class Handler(WSGIRequestHandler):
        def setup(self) -> None:
            # wsgiref writes the headers and the body in two sends: with Nagle on, the
            # body waits for the client's delayed ACK of the headers (40 ms on Linux).
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().setup()

    server = ThreadedWSGIServer(("127.0.0.1", 0), Handler)
    server.set_app(app)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


def control(command: str) -> Any:
    """The benchmark's requests: wait for the shadow pool to drain, or read the counts."""
    from django_mirror.models import MetricWindow
    from django_mirror.observability import stats
    from django_mirror.shadow import get_pool

    if command == "idle":
        return get_pool().wait_idle(60)
    if command == "counts":
        stats.flush()
        totals: dict[str, int] = {}
        windows = MetricWindow.objects.filter(model__startswith="follows.", process=stats.PROCESS)
        for counts in windows.values_list("counts", flat=True):
            for name, n in counts.items():
                totals[name] = totals.get(name, 0) + n
        return totals
    raise ValueError(command)


# --- the benchmark's side: starting the servers, timing requests --------------------------


def example_env(db: str, rate: float) -> dict[str, str]:
    """The environment of an example-project process on the benchmark's databases."""
    if db == "postgres":
        urls = [pg_conninfo("bench_source"), pg_conninfo("bench_target")]
    else:
        work = Path(os.environ["BENCH_DIR"])
        urls = [f"sqlite:///{work / 'example_source.sqlite3'}"]
        urls.append(f"sqlite:///{work / 'example_target.sqlite3'}")
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ENDPOINT_URL",)}
    env.update(
        DJANGO_SETTINGS_MODULE="twitch.settings",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(EXAMPLE)]),
        DATABASE_URL=f"{urls[0]}?CONN_MAX_AGE=600",
        TARGET_DATABASE_URL=f"{urls[1]}?CONN_MAX_AGE=600",
        DEBUG="false",  # as served in production: no query log kept per connection
        MIRROR_PHASE="mirror",
        SHADOW_READ_RATE=str(rate),
    )
    return env


class Server:
    """One example-project server process and a kept-alive connection to it."""

    def __init__(self, db: str, rate: float) -> None:
        self.rate = rate
        self.log = Path(os.environ["BENCH_DIR"]) / f"server-{rate}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.shadow_latency", "serve"],
            cwd=EXAMPLE,
            env=example_env(db, rate),
            stdout=subprocess.PIPE,
            stderr=self.log.open("w"),
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r}\n{self.log.read_text()}")
        self.conn = http.client.HTTPConnection("127.0.0.1", int(line.split()[1]), timeout=60)
        #: Requests to the project itself (not the benchmark's control requests).
        self.served = 0

    def get(self, path: str) -> bytes:
        self.served += not path.startswith(CONTROL)
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:500]!r}")
        return body

    def control(self, command: str) -> Any:
        return json.loads(self.get(CONTROL + command))

    def stop(self) -> None:
        self.conn.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def quantile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(
    servers: list[Server], paths: list[str], block: int, budget: float, interval: float
) -> tuple[list[list[float]], list[float]]:
    """Seconds of each request per server, blocks alternated, and each round's p50 ratio.

    With ``interval`` > 0 a request is sent every ``interval`` seconds, or as soon as
    the one before answered if that took longer; with 0 each request is sent as soon as
    the last one answered. A latency runs from sending to the last byte of the answer:
    counting from when a request was due instead would charge one stall of a shared
    machine to every request behind it. Before every block both servers' pools are
    drained, untimed. Round 0 is a warm-up.
    """
    latencies: list[list[float]] = [[] for _ in servers]
    round_ratios: list[float] = []
    started = time.monotonic()
    r = 0
    while r < 4 or time.monotonic() - started < budget:
        order = list(range(len(servers)))
        if r % 2:
            order.reverse()
        this_round: list[list[float]] = [[] for _ in servers]
        for i in order:
            for server in servers:
                server.control("idle")
            gc.collect()
            for k in range(block):
                sent = time.perf_counter()
                servers[i].get(paths[(r * block + k) % len(paths)])
                this_round[i].append(time.perf_counter() - sent)
                while (ahead := sent + interval - time.perf_counter()) > 0:
                    time.sleep(ahead)
        if r:
            for i, values in enumerate(this_round):
                latencies[i].extend(values)
            round_ratios.append(statistics.median(this_round[0]) / statistics.median(this_round[1]))
        r += 1
    return latencies, round_ratios


def run(db: str, quick: bool) -> Outcome:
    block = 20 if quick else 40
    budgets = (3.0, 3.0) if quick else (20.0, 15.0)

    log("shadow latency: seeding the example project's databases (mirror_copy to the target)")
    seeded = subprocess.run(
        [sys.executable, "-m", "benchmarks.shadow_latency", "seed"],
        cwd=EXAMPLE,
        env=example_env(db, 0.0),
        stdout=subprocess.PIPE,
        text=True,
        check=True,
        timeout=300,
    )
    channels: list[int] = json.loads(seeded.stdout.strip().splitlines()[-1])["channels"]
    paths = [f"/channels/{pk}/followers/" for pk in channels]

    servers = [Server(db, 1.0), Server(db, 0.0)]
    try:
        page = json.loads(servers[0].get(paths[0]))
        assert page["followers"] == FOLLOWERS and len(page["newest"]) == 50, page
        assert servers[1].get(paths[0]) == servers[0].get(paths[0])
        # The unsampled server's service time sets the pace: a request every LOAD_GAP
        # times it keeps that server about 1/LOAD_GAP busy.
        warm = [0.0] * 2 * block
        for k in range(len(warm)):
            t0 = time.perf_counter()
            servers[1].get(paths[k % len(paths)])
            warm[k] = time.perf_counter() - t0
        interval = LOAD_GAP * statistics.median(warm)
        log(
            f"shadow latency: paced, a request every {interval * 1e3:.1f} ms, blocks of "
            f"{block}, ~{budgets[0]:.0f} s"
        )
        paced, paced_rounds = measure(servers, paths, block, budgets[0], interval)
        log(f"shadow latency: back to back, blocks of {block}, ~{budgets[1]:.0f} s")
        saturated, saturated_rounds = measure(servers, paths, block, budgets[1], 0.0)
        servers[0].control("idle")
        counts = servers[0].control("counts")
        unsampled = servers[1].control("counts")
    finally:
        for server in servers:
            server.stop()

    compared = counts.get("read.compared", 0)
    requests = servers[0].served
    # Every read of every request compared and matching: none skipped or timed out.
    assert compared == 3 * requests == counts.get("read.match", 0), (requests, counts)
    assert not unsampled.get("read.compared"), unsampled

    outcome = Outcome()
    figures: list[str] = []
    for label, latencies, rounds, targets in (
        (
            f"paced at ~1/{LOAD_GAP} load",
            paced,
            paced_rounds,
            (P50_TARGET, P95_TARGET),
        ),
        ("back to back (saturated)", saturated, saturated_rounds, (None, None)),
    ):
        for name, fraction, target in (("p50", 0.5, targets[0]), ("p95", 0.95, targets[1])):
            sampled, plain = (quantile(values, fraction) for values in latencies)
            ratio = sampled / plain
            outcome.rows.append(
                Row(
                    f"shadow latency: {name} rate 1.0 / 0.0, {label}",
                    db,
                    f"{ratio:.2f}x",
                    f"<= {target}x" if target else "reported",
                    target is None or ratio <= target,
                    ratio,
                )
            )
            figures.append(f"{name} {sampled * 1e3:.2f} ms vs {plain * 1e3:.2f} ms")
        figures[-2] = f"{label}: {figures[-2]}"
        figures[-1] += (
            f" ({len(latencies[0]):,} requests a side in {len(rounds)} rounds, per-round "
            f"p50 ratios {min(rounds):.2f}-{max(rounds):.2f})"
        )
    outcome.notes.append(
        f"shadow latency [{db}]: GET /channels/<id>/followers/ (3 reads of mirrored models) "
        f"from 2 example-project servers over HTTP, a request every {interval * 1e3:.1f} "
        f"ms when paced; {'; '.join(figures)}. The sampled server compared all {compared:,} "
        f"reads of its {requests:,} requests, every one matching; ratios are of the "
        "quantiles over all kept requests of each side, its shadow pool running throughout."
    )
    return outcome


if __name__ == "__main__":
    {"seed": seed, "serve": serve}[sys.argv[1]]()
