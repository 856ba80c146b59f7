"""The store's database thread: jobs in order, results back on the event loop.

One thread owns the database connection, so writes and the reads that
must see them run strictly in submission order. It is a plain queue and
``call_soon_threadsafe`` rather than ``run_in_executor``: the executor's
futures cost the loop more per batch than the batch's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any, Callable

Done = Callable[[Any, "BaseException | None"], None]


class DatabaseThread:
    def __init__(self, loop: asyncio.AbstractEventLoop, name: str = "store-db") -> None:
        self._loop = loop
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Done] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], Any], done: Done) -> None:
        """Run ``job()`` on the thread, then ``done(result, error)`` on the loop."""
        self._jobs.put((job, done))

    def close(self, timeout: float = 30.0) -> None:
        """Finish the jobs already submitted, then stop."""
        self._jobs.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, done = item
            try:
                result, error = job(), None
            except BaseException as exc:  # handed to the loop, which decides
                result, error = None, exc
            try:
                self._loop.call_soon_threadsafe(done, result, error)
            except RuntimeError:  # the loop is gone: the store is stopping
                return
