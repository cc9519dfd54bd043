"""``python -m benchmarks``: run each benchmark in its own process and print one table.

Every (benchmark, database) pair runs in a fresh subprocess with fresh databases, so
one benchmark's tables, caches or peak memory never colour another's figures. The
parent only collects the rows each child prints and lays them out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import Outcome, Row

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
MARKER = "BENCH-RESULT "

#: name -> (module, databases it runs on), as the issues ask: replay memory on SQLite,
#: verify on PostgreSQL.
BENCHMARKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "capture": ("benchmarks.capture_overhead", ("sqlite", "postgres")),
    "replay": ("benchmarks.replay_apply", ("sqlite", "postgres")),
    "memory": ("benchmarks.replay_memory", ("sqlite",)),
    "copy": ("benchmarks.copy_rows", ("sqlite", "postgres")),
    "verify": ("benchmarks.verify_rows", ("postgres",)),
    "shadow-latency": ("benchmarks.shadow_latency", ("sqlite", "postgres")),
    "shadow-throughput": ("benchmarks.shadow_throughput", ("sqlite", "postgres")),
    "dynamodb": ("benchmarks.dynamodb_replay", ("sqlite",)),
    "repository": ("benchmarks.repository_overhead", ("sqlite", "postgres")),
    "relay": ("benchmarks.relay_throughput", ("sqlite", "postgres")),
    "replay-stream": ("benchmarks.replay_stream", ("sqlite", "postgres")),
    "wal-capture": ("benchmarks.wal_capture", ("postgres",)),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument(
        "--only", action="append", choices=sorted(BENCHMARKS), help="run only this benchmark"
    )
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgres"),
        help="default: SQLite, then PostgreSQL if 127.0.0.1:5432 answers",
    )
    parser.add_argument("--child", choices=sorted(BENCHMARKS), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def postgres_answers() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
    except OSError:
        return False
    return True


# --- child: one benchmark on one database ----------------------------------------------


def child(name: str, db: str, quick: bool) -> int:
    import importlib

    from benchmarks.common import setup_django

    setup_django()
    module = importlib.import_module(BENCHMARKS[name][0])
    outcome: Outcome = module.run(db, quick)
    payload = {"rows": [r.as_dict() for r in outcome.rows], "notes": outcome.notes}
    print(MARKER + json.dumps(payload), flush=True)
    return 0


# --- parent ----------------------------------------------------------------------------


def run_child(name: str, db: str, quick: bool) -> Outcome:
    """Run one benchmark in a subprocess; a crash becomes a FAIL row, not a lost run."""
    work = RESULTS / f"tmp-{os.getpid()}-{name}-{db}"
    work.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "BENCH_DATABASE": db,
        "BENCH_DIR": str(work),
        "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "benchmarks", "--child", name, "--database", db]
    if quick:
        command.append("--quick")
    started = time.monotonic()
    print(f"== {name} on {db}", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, timeout=600
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith(MARKER)]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"exit status {proc.returncode}")
        data = json.loads(lines[-1][len(MARKER) :])
        outcome = Outcome([Row(**row) for row in data["rows"]], data["notes"])
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
        outcome = Outcome(
            [Row(f"{name}: did not finish", db, "error", "-", False)],
            [f"{name} [{db}]: the benchmark process failed ({exc}); see its output above."],
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"   {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return outcome


def environment() -> str:
    import sqlite3

    import django

    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        rev = "?"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"django-mirror benchmarks, {dt.datetime.now().isoformat(timespec='seconds')}, "
        f"commit {rev or '?'}; Python {platform.python_version()}, Django {django.__version__}, "
        f"SQLite {sqlite3.sqlite_version}; {os.cpu_count()} CPUs, load {load}"
    )


def table(rows: list[Row]) -> str:
    header = ("benchmark", "db", "measured", "target", "result")
    cells = [
        (r.benchmark, r.db, r.measured, r.target, "PASS" if r.passed else "FAIL") for r in rows
    ]
    widths = [max(len(c[i]) for c in [header, *cells]) + 2 for i in range(len(header) - 1)]
    return "\n".join(
        "".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + line[-1]
        for line in [header, *cells]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args.child, args.database or "sqlite", args.quick)

    notes: list[str] = []
    if args.database:
        databases = [args.database]
        if args.database == "postgres" and not postgres_answers():
            print("PostgreSQL does not answer on 127.0.0.1:5432", file=sys.stderr)
            return 2
    else:
        databases = ["sqlite"]
        if postgres_answers():
            databases.append("postgres")
        else:
            notes.append("PostgreSQL skipped: nothing answers on 127.0.0.1:5432.")

    names = args.only or list(BENCHMARKS)
    rows: list[Row] = []
    for db in databases:
        for name in names:
            if db not in BENCHMARKS[name][1]:
                only = " and ".join(BENCHMARKS[name][1])
                notes.append(f"{name} [{db}]: not run; it is measured on {only} only.")
                continue
            outcome = run_child(name, db, args.quick)
            rows.extend(outcome.rows)
            notes.extend(outcome.notes)

    report = "\n".join(
        [
            environment() + (" -- QUICK smoke run, sizes reduced" if args.quick else ""),
            "Ratios are medians of per-round ratios, variants interleaved in one process.",
            "",
            table(rows),
            "",
            *(f"- {note}" for note in notes),
        ]
    )
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.txt").write_text(report + "\n")
    return 0 if rows and all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
