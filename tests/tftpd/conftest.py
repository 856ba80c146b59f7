"""Fixtures for tftpd: fake content, and a real server over it on loopback."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import threading
import time
from collections import Counter
from typing import Any, Callable, TypeVar

import pytest

from astralboot.common.config.model import TftpConfig
from astralboot.common.errors import ErrorCode
from astralboot.services.tftpd.files import Blob, FileError
from astralboot.services.tftpd.memory import MemoryBudget
from astralboot.services.tftpd.netascii import NetasciiCache
from astralboot.services.tftpd.options import Limits
from astralboot.services.tftpd.policy import ReadService
from astralboot.services.tftpd.server import TftpServer

T = TypeVar("T")


class FakeContent:
    """A :class:`ContentSource` over a dict; records what it was asked."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.files = dict(files or {})
        self.errors: dict[str, FileError] = {}
        self.calls: list[str] = []
        self.delay = 0.0

    async def open(self, path: str) -> Blob:
        self.calls.append(path)
        if self.delay:
            await asyncio.sleep(self.delay)
        if path in self.errors:
            raise self.errors[path]
        data = self.files.get(path)
        if data is None:
            raise FileError(ErrorCode.NOT_FOUND, f"{path} not found")
        return Blob(hashlib.sha256(data).hexdigest(), len(data), data)


@pytest.fixture
def fake_content() -> FakeContent:
    return FakeContent()


class LoopbackServer:
    """A real :class:`TftpServer` on 127.0.0.1 in a thread, over fake content.

    For the server layer's own tests: real sockets and real clients, with
    content injected. The whole service against the real store runs in
    test_tftp_lab.py.
    """

    def __init__(self, content: FakeContent, *, single_port: bool = False,
                 max_sessions: int = 64, per_client: int = 64, timeout: float = 1.0,
                 retries: int = 4, max_blksize: int = 1468, memory_max: int = 64 << 20) -> None:
        self.content = content
        self.settings = TftpConfig(port=0, single_port=single_port, max_sessions=max_sessions,
                                   per_client=per_client, timeout=timeout, retries=retries,
                                   memory_cache=1 << 20, memory_max=memory_max)
        self.netascii: NetasciiCache | None = None
        self.limits = Limits(max_blksize=max_blksize, timeout=timeout)
        self.events: list[tuple[str, str, str]] = []
        self.server: TftpServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tftpd-test", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        return ("127.0.0.1", self.server.port)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.netascii = NetasciiCache(MemoryBudget(self.settings.memory_max))
            service = ReadService(self.content, self.limits, retries=self.settings.retries,
                                  netascii=self.netascii)
            self.server = TftpServer(self.settings, "127.0.0.1", service,
                                     report=lambda *e: self.events.append(e))
            self.server.open()
            self._loop = loop
            self._task = asyncio.current_task()
        except BaseException as exc:
            self._error = exc  # raised in the test's thread by __enter__
            return
        finally:
            self._ready.set()
        try:
            await self.server.serve()
        except asyncio.CancelledError:
            pass

    def __enter__(self) -> "LoopbackServer":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the test TFTP server did not start")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the server's loop (to read its state safely)."""
        assert self._loop is not None
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return done.result(10)

    @property
    def stats(self) -> Counter[str]:
        assert self.server is not None
        return self.call(lambda: Counter(self.server.stats))  # type: ignore[union-attr]

    def settle(self, sessions: int = 0, timeout: float = 10.0) -> None:
        """Wait until the server is down to ``sessions`` sessions.

        A client exits once it has sent its last ACK; the server counts the
        transfer when that ACK arrives, a moment later.
        """
        end = time.monotonic() + timeout
        while self.sessions() != sessions and time.monotonic() < end:
            time.sleep(0.01)
        self.call(lambda: None)  # and whatever that last packet scheduled has run

    def sessions(self) -> int:
        return self.call(lambda: len(self.server.sessions))  # type: ignore[union-attr]


@pytest.fixture
def loopback_server(fake_content: FakeContent) -> Callable[..., LoopbackServer]:
    """Start a server over ``fake_content``: ``with loopback_server(**settings) as srv``."""

    def start(**settings: Any) -> LoopbackServer:
        return LoopbackServer(fake_content, **settings)

    return start
