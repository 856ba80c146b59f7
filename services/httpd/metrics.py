"""``/metrics``: Prometheus text format, summed over every gunicorn worker.

Each worker process counts into its own small memory-mapped file of 64-bit
slots (no system call per increment); a scrape, whichever worker takes it,
adds up all the files in the folder, those of exited workers included, so
counters never go backwards when a worker is replaced. Label values come
from fixed lists, so the layout is fixed and needs no coordination.
Without a folder (tests) the slots live in anonymous memory.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

import falcon

from astralboot.common import __version__

ROUTES = ("menu", "choose", "class", "setclass", "boot", "image", "bin", "tftp", "action",
          "config", "api", "health", "metrics", "other")
STATUSES = (200, 206, 304, 400, 404, 405, 409, 416, 500, 503, 0)  # 0: any other
STAGES = ("http.script", "http.image", "http.template")

_REQ = 0
_BYTES = _REQ + len(ROUTES) * len(STATUSES)
_STAGE = _BYTES + len(ROUTES)
SLOTS = _STAGE + len(STAGES)

_ROUTE_INDEX = {r: i for i, r in enumerate(ROUTES)}
_STATUS_INDEX = {s: i for i, s in enumerate(STATUSES)}
_STAGE_INDEX = {s: i for i, s in enumerate(STAGES)}


class Metrics:
    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self._pid = 0
        self._slots: memoryview | None = None
        self._lock = threading.Lock()

    @staticmethod
    def prepare(folder: Path) -> "Metrics":
        """Called once by the master before workers fork: an empty folder."""
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.counters"):
            old.unlink()
        return Metrics(folder)

    def _mine(self) -> memoryview:
        pid = os.getpid()
        if self._slots is None or pid != self._pid:
            with self._lock:
                if self._slots is None or pid != self._pid:
                    size = SLOTS * 8
                    if self.folder is None:
                        buf = mmap.mmap(-1, size)
                    else:
                        path = self.folder / f"{pid}.counters"
                        with open(path, "w+b") as f:
                            f.truncate(size)
                            buf = mmap.mmap(f.fileno(), size)
                    self._slots = memoryview(buf).cast("Q")
                    self._pid = pid
        return self._slots

    def _add(self, slot: int, n: int) -> None:
        slots = self._mine()
        with self._lock:
            slots[slot] += n

    def request(self, route: str, status: int, nbytes: int) -> None:
        r = _ROUTE_INDEX.get(route, _ROUTE_INDEX["other"])
        s = _STATUS_INDEX.get(status, _STATUS_INDEX[0])
        slots = self._mine()
        with self._lock:
            slots[_REQ + r * len(STATUSES) + s] += 1
            slots[_BYTES + r] += nbytes

    def stage(self, stage: str) -> None:
        i = _STAGE_INDEX.get(stage)
        if i is not None:
            self._add(_STAGE + i, 1)

    def totals(self) -> list[int]:
        """Every slot summed over all worker files (or this process alone)."""
        if self.folder is None:
            return list(self._mine())
        self._mine()
        sums = [0] * SLOTS
        for path in self.folder.glob("*.counters"):
            try:
                data = memoryview(path.read_bytes()).cast("Q")
            except (OSError, TypeError):
                continue
            for i in range(min(SLOTS, len(data))):
                sums[i] += data[i]
        return sums


def render(totals: list[int], leases: Counter[str] | None,
           extra: Iterable[tuple[str, str, float]] = ()) -> str:
    out = ["# HELP astralboot_http_requests_total HTTP requests answered, by route and status.",
           "# TYPE astralboot_http_requests_total counter"]
    for ri, route in enumerate(ROUTES):
        for si, status in enumerate(STATUSES):
            n = totals[_REQ + ri * len(STATUSES) + si]
            if n:
                label = str(status) if status else "other"
                out.append(f'astralboot_http_requests_total{{route="{route}",'
                           f'status="{label}"}} {n}')
    out += ["# HELP astralboot_http_response_bytes_total Body bytes sent, by route.",
            "# TYPE astralboot_http_response_bytes_total counter"]
    for ri, route in enumerate(ROUTES):
        out.append(f'astralboot_http_response_bytes_total{{route="{route}"}} {totals[_BYTES + ri]}')
    out += ["# HELP astralboot_boot_stage_total Boot stages served by this httpd.",
            "# TYPE astralboot_boot_stage_total counter"]
    for i, stage in enumerate(STAGES):
        out.append(f'astralboot_boot_stage_total{{stage="{stage}"}} {totals[_STAGE + i]}')
    if leases is not None:
        out += ["# HELP astralboot_leases Leases in the store, by state.",
                "# TYPE astralboot_leases gauge"]
        for state in ("offered", "bound", "released", "declined", "expired"):
            out.append(f'astralboot_leases{{state="{state}"}} {leases.get(state, 0)}')
    out += ["# HELP astralboot_store_up Whether the store answered this scrape.",
            "# TYPE astralboot_store_up gauge",
            f"astralboot_store_up {0 if leases is None else 1}",
            "# HELP astralboot_httpd_info This httpd's version.",
            "# TYPE astralboot_httpd_info gauge",
            f'astralboot_httpd_info{{version="{__version__}"}} 1']
    for name, help_text, value in extra:
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value:g}"]
    return "\n".join(out) + "\n"


class MetricsMiddleware:
    """Counts every response by its route (the matched URI template) and status."""

    def __init__(self, metrics: Metrics, routes: dict[str, str]) -> None:
        self.metrics = metrics
        self.routes = routes

    def process_response(self, req: falcon.Request, resp: falcon.Response,
                         resource: object, req_succeeded: bool) -> None:
        route = self.routes.get(req.uri_template or "", "other")
        nbytes = getattr(req.context, "bytes_out", None)
        if nbytes is None:
            if resp.text is not None:
                nbytes = len(resp.text)  # scripts and JSON are ASCII; close enough otherwise
            elif resp.data is not None:
                nbytes = len(resp.data)
            else:
                nbytes = 0
        if req.method == "HEAD":
            nbytes = 0
        self.metrics.request(route, resp.status_code, nbytes)


class MetricsResource:
    def __init__(self, metrics: Metrics, leases: Callable[[], Counter[str] | None]) -> None:
        self.metrics = metrics
        self.leases = leases

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "text/plain; version=0.0.4; charset=utf-8"
        resp.text = render(self.metrics.totals(), self.leases())
