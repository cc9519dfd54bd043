"""One daemon thread of a background service (relay shipper, phase watcher, stats
writer): started, woken and stopped the same way, so ``runtime`` can own them all."""

from __future__ import annotations

import threading


class ServiceThread:
    """A service whose work runs in ``_run`` on one daemon thread named ``thread_name``;
    ``_run`` loops until ``stopping`` is set and ``wake`` cuts its waits short."""

    name = "service"
    thread_name = "django-mirror"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.wake = threading.Event()
        self.stopping = False

    def start(self) -> None:
        with self.lock:
            if self.thread is not None and self.thread.is_alive():
                return
            self.stopping = False
            self.thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
            self.thread.start()

    def stop(self, timeout: float) -> None:
        self.stopping = True
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout)

    def _run(self) -> None:
        raise NotImplementedError
