"""moto's ``ThreadedMotoServer`` in a process of its own, as AWS runs on machines of
its own: in the benchmark's process its request handling would take the interpreter
lock and be billed to the code measured."""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def serve(ports: Any, stop: Any) -> None:
    """Child process: moto's threaded server on a free port until ``stop`` is set."""
    from django_mirror.testing import moto_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a log line per request
    with moto_server() as endpoint:
        ports.put(endpoint)
        stop.wait()


@contextmanager
def moto_process() -> Iterator[tuple[str, int]]:
    """Endpoint and process id of a moto server in a child process, stopped on exit."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(name, "bench")  # moto takes any credentials
    context = multiprocessing.get_context("spawn")  # a clean interpreter, no Django
    ports, stop = context.Queue(), context.Event()
    child = context.Process(target=serve, args=(ports, stop), daemon=True)
    child.start()
    try:
        yield ports.get(timeout=60), child.pid
    finally:
        stop.set()
        child.join(10)
        if child.is_alive():
            child.terminate()
            child.join()
