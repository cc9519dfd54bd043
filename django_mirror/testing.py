"""For tests of a project that uses django-mirror: moto's server, made safe to ship to.

moto's Kinesis numbers a record by scanning the shard's records: two ``PutRecords``
handled at once (the relay thread and a ``mirror_relay`` of the same test, say) can
get the same sequence number, and one record silently replaces the other. Real Kinesis
never does that; a test that counts records must not see it either.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any


class _OneRequestAtATime:
    """A WSGI app that hands its requests to ``app`` one at a time."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with self.lock:
            return list(self.app(environ, start_response))


@contextmanager
def moto_server(ip_address: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """moto's ``ThreadedMotoServer`` handling one request at a time, for the block; gives
    its endpoint URL (``port`` 0: a free one)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=ip_address, port=port, verbose=False)
    server.start()
    wsgi = server._server  # moto 5.0 has no get_host_and_port()
    assert wsgi is not None  # start() returns once the server is made
    wsgi.app = _OneRequestAtATime(wsgi.app)
    host, bound = wsgi.server_address[:2]
    assert isinstance(host, str)  # the name of a bound AF_INET(6) socket
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.stop()
