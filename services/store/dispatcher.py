"""Content requests off the event loop: stat, list and read run in worker threads.

A stat the content store can answer from memory is answered at once;
anything else (a hash of a file, a fetch from IPFS) runs in a worker, and
identical requests in flight share one job. A request is answered
``unavailable`` when ``ipfs.timeout`` passes; the job goes on, so asking
again finds the file.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from astralboot.common.bus.schema import Reply
from astralboot.common.bus.server import Incoming, error
from astralboot.common.errors import ErrorCode
from astralboot.common.messages import (ContentDataReply, ContentList, ContentListReply,
                                        ContentRead, ContentStat, ContentStatReply, ErrorReply)

from astralboot.services.store.content import ContentStore
from astralboot.services.store.sources import BadPath, ContentMissing, SourceError

log = logging.getLogger(__name__)

CONTENT_WORKERS = 4

_CONTENT_CODES = {BadPath: ErrorCode.BAD_REQUEST, ContentMissing: ErrorCode.NOT_FOUND}


def source_error(exc: SourceError) -> ErrorReply:
    return error(_CONTENT_CODES.get(type(exc), ErrorCode.UNAVAILABLE), str(exc))


class ContentDispatcher:
    """Runs content requests in workers; ``answer(incoming, reply)`` gets the late replies."""

    def __init__(self, content: ContentStore, timeout: float, stats: Counter[str],
                 answer: Callable[[Incoming, Reply], None]) -> None:
        self.content = content
        self.timeout = timeout  # ipfs.timeout
        self.stats = stats  # the server's counters, shown by health
        self._answer = answer
        self._pool = ThreadPoolExecutor(CONTENT_WORKERS, thread_name_prefix="store-content")
        self._jobs: dict[tuple[str, str], asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def dispatch(self, incoming: Incoming) -> Reply | None:
        """The reply when it is known at once; else None, and ``answer`` gets it later."""
        request = incoming.request
        job: Callable[[], Reply]
        if isinstance(request, ContentStat):
            try:
                entry = self.content.quick_stat(request.path)
            except SourceError as exc:
                return source_error(exc)
            if entry is not None:
                self.stats["content.quick"] += 1
                return ContentStatReply(entry=entry)
            path = request.path
            key = ("stat", path)
            job = lambda: ContentStatReply(entry=self.content.stat(path))  # noqa: E731
        elif isinstance(request, ContentList):
            path = request.path
            key = ("list", path)
            job = lambda: ContentListReply(path=path, entries=tuple(self.content.list(path)))  # noqa: E731
        else:
            assert isinstance(request, ContentRead)
            digest, offset, length = request.digest, request.offset, request.length
            key = ("read", f"{digest}:{offset}:{length}")

            def job() -> Reply:
                data, size = self.content.read(digest, offset, length)
                return ContentDataReply(digest=digest, offset=offset, size=size, data=data)
        future = self._jobs.get(key)
        if future is None:
            future = asyncio.get_running_loop().run_in_executor(self._pool, job)
            self._jobs[key] = future
            future.add_done_callback(lambda _f: self._jobs.pop(key, None))
        task = asyncio.get_running_loop().create_task(self._reply(incoming, future))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return None

    async def _reply(self, incoming: Incoming, future: asyncio.Future[Reply]) -> None:
        timeout = self.timeout
        try:
            reply = await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            self.stats["content.timeouts"] += 1
            reply = error(ErrorCode.UNAVAILABLE,
                          f"{incoming.request.kind}: no answer from "
                          f"{self.content.source.description} within {timeout:g}s "
                          "(still trying; ask again)")
        except SourceError as exc:
            reply = source_error(exc)
        except OSError as exc:
            log.error("content request failed: %s", exc)
            reply = error(ErrorCode.UNAVAILABLE, f"cache: {exc}")
        except Exception as exc:  # a bug: say so to the caller and in the log
            log.exception("content request %s failed", incoming.request.kind)
            reply = error(ErrorCode.INTERNAL, f"{exc.__class__.__name__}: {exc}")
        self.stats["content.requests"] += 1
        self._answer(incoming, reply)
