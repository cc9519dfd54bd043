"""A throwaway PostgreSQL 15 cluster with ``wal_level = logical`` for the WAL capture
tests, started and stopped by them, and the aliases and settings that point at it.

``python -m tests.wal_cluster PORT ARGS...`` runs ``mirror_capture ARGS`` against the
cluster in a process of its own (the crash test kills it).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BIN = Path(os.environ.get("MIRROR_PG_BIN", "/usr/lib/postgresql/15/bin"))
SOURCE, TARGET = "walsrc", "waltgt"
#: The models the tests capture from the log: a foreign-key group, an M2M table and
#: every field type.
LABELS = ("testapp.Author", "testapp.Tag", "testapp.Book", "testapp.AllTypes")


def unavailable() -> str | None:
    """Why no cluster can be started here, or None."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (BIN / tool).exists():
            return f"no PostgreSQL binaries in {BIN} ({tool} missing)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root without runuser to start PostgreSQL as postgres"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    directory: Path
    port: int

    def _run(self, *args: str) -> None:
        command = [str(a) for a in args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    @classmethod
    def start(cls) -> Cluster:
        directory = Path(tempfile.mkdtemp(prefix="mirror-wal-"))
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(directory, entry.pw_uid, entry.pw_gid)
        cluster = cls(directory, _free_port())
        data = directory / "data"
        cluster._run(BIN / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
        options = (
            f"-c port={cluster.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={directory} -c wal_level=logical "
            "-c max_replication_slots=4 -c max_wal_senders=4 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        cluster._run(
            BIN / "pg_ctl", "-D", data, "-o", options, "-l", directory / "log", "-w", "start"
        )
        import psycopg

        with psycopg.connect(**cluster.params("postgres"), autocommit=True) as conn:
            for name in ("wal_source", "wal_target"):
                conn.execute(f"CREATE DATABASE {name}")
        return cluster

    def stop(self) -> None:
        self._run(BIN / "pg_ctl", "-D", self.directory / "data", "-m", "immediate", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)

    def params(self, dbname: str) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.port, "user": "postgres", "dbname": dbname}


def databases(port: int) -> dict[str, dict[str, Any]]:
    """The two aliases on the cluster: the captured source and the replay target."""
    return {
        alias: {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": "postgres",
            "HOST": "127.0.0.1",
            "PORT": str(port),
        }
        for alias, name in ((SOURCE, "wal_source"), (TARGET, "wal_target"))
    }


def mirror_settings(
    base: dict[str, Any], capture: str = "wal", labels: tuple[str, ...] = LABELS
) -> dict[str, Any]:
    """``DJANGO_MIRROR`` with the source on the cluster, read from its log: ``labels``
    (the tests' models unless told; the benchmarks pass theirs) in phase capture."""
    return {
        **base,
        "SOURCE": SOURCE,
        "CAPTURE": capture,
        "RELAY": {"ON_COMMIT": "off"},
        "MODELS": {label: {"target": TARGET, "phase": "capture"} for label in labels},
    }


def main(port: int, args: list[str]) -> None:
    """``mirror_capture`` with the test settings pointed at the cluster."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    from tests import settings as test_settings

    test_settings.DATABASES.update(databases(port))
    test_settings.DJANGO_MIRROR = mirror_settings(test_settings.DJANGO_MIRROR)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("mirror_capture", *args)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
