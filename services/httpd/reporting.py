"""Boot events for what httpd served, reported without delaying the response.

Every event is stamped when the request is served and queued; one
background thread per worker process sends them in order (a non-blocking
bus send each). A script URL names the MAC; an image request only has the
client's address, which the event carries for the store to find the MAC
from its leases: a download never waits on the store, and no event costs a
lookup. Events are best effort: a full queue drops them and counts it.

A machine that fetches the same thing again within a second (a script
stuck in a loop, a load test) is one boot stage, not hundreds: repeats of
the same (stage, MAC or address, detail) inside :data:`REPEAT_WINDOW` are counted
(``events_repeated``) but not sent, so such a client cannot flood the
store's event log.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import Counter
from typing import Callable

from astralboot.common.messages import BootEvent, EventReport
from astralboot.services.httpd.storeclient import StoreClient

log = logging.getLogger(__name__)

SERVICE = "httpd"
QUEUE_SIZE = 10_000
REPEAT_WINDOW = 1.0  # seconds
RECENT_MAX = 50_000

_Pending = tuple[float, str, "str | None", "str | None", str]


class Reporter:
    def __init__(self, store: StoreClient,
                 on_sent: Callable[[str], None] = lambda stage: None) -> None:
        self.store = store
        self.on_sent = on_sent
        self.stats: Counter[str] = Counter()
        self.clock = time.monotonic
        self._queue: queue.Queue[_Pending] = queue.Queue(QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._recent: dict[tuple[str, str | None, str], float] = {}

    def report(self, stage: str, mac: str | None, ip: str | None, detail: str = "") -> None:
        """Queue one event, stamped now; without a MAC the store finds it from ``ip``."""
        self._start()
        try:
            self._queue.put_nowait((time.time(), stage, mac, ip, detail))
        except queue.Full:
            self.stats["events_dropped"] += 1

    def flush(self) -> None:
        """Wait until every queued event has been resolved and sent (tests, shutdown)."""
        if self._thread is not None and self._pid == os.getpid():
            self._queue.join()

    def _send(self, when: float, stage: str, mac: str | None, ip: str | None,
              detail: str) -> None:
        key = (stage, mac or ip, detail)
        now = self.clock()
        last = self._recent.get(key)
        if last is not None and now - last < REPEAT_WINDOW:
            self.stats["events_repeated"] += 1
            return
        if len(self._recent) >= RECENT_MAX:
            self._recent.clear()
        self._recent[key] = now
        self.store.report(EventReport(event=BootEvent(time=when, mac=mac, ip=ip, service=SERVICE,
                                                      stage=stage, detail=detail)))
        self.stats[f"stage.{stage}"] += 1
        self.on_sent(stage)

    def _start(self) -> None:
        pid = os.getpid()
        if self._thread is not None and self._pid == pid:
            return
        with self._lock:  # once per process: a forked worker starts its own thread
            if self._thread is None or self._pid != pid:
                self._pid = pid
                self._queue = queue.Queue(QUEUE_SIZE)
                self._thread = threading.Thread(target=self._run, name="httpd-events",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        q = self._queue
        while True:
            when, stage, mac, ip, detail = q.get()
            try:
                if mac is None and ip is None:
                    self.stats["events_unattributed"] += 1
                else:
                    self._send(when, stage, mac, ip, detail)
            except Exception:
                log.exception("could not report %s for %s", stage, mac or ip)
            finally:
                q.task_done()
