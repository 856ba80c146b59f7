"""The store's request socket: every request read, routed, and its reply sent.

It decides nothing itself: lease, machine and event requests go to
:class:`StoreService` (in memory, on the event loop) and their writes to
the :class:`CommitScheduler`; content requests go to the
:class:`ContentDispatcher` (worker threads); a retried request is answered
from the :class:`RetryCache`; Health is answered here, from the counters
of all of them. What it owns is the ROUTER socket, the events socket and
the order things happen in on the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import zmq

from astralboot.common.bus.frames import pack
from astralboot.common.bus.schema import Reply
from astralboot.common.bus.security import (ZapHandler, make_server, may_send, role_of,
                                            server_secret)
from astralboot.common.bus.server import (Incoming, bind, decode, encode, error, health_reply,
                                          ipc_path, request_socket)
from astralboot.common.config import Config
from astralboot.common.errors import ErrorCode
from astralboot.common.messages import (ContentList, ContentRead, ContentStat, EventReport,
                                        Health)

from astralboot.services.store.commits import CommitScheduler
from astralboot.services.store.content import ContentStore
from astralboot.services.store.database import Database, describe
from astralboot.services.store.dispatcher import ContentDispatcher
from astralboot.services.store.eventhub import EventHub
from astralboot.services.store.rawsocket import (EVENTS as _EVENTS, MORE as _MORE, NOBLOCK as _NOBLOCK, POLLIN as _POLLIN,
                        RCVMORE as _RCVMORE)
from astralboot.services.store.rawsocket import get as _get, recv as _recv, send as _send
from astralboot.services.store.retries import RetryCache, Waiting, request_key
from astralboot.services.store.service import Result, StoreService

SERVICE = "store"
DRAIN = 2000  # frames handled per wake-up before yielding to the loop


class StoreServer:
    def __init__(self, config: Config, database: Database, service: StoreService,
                 content: ContentStore, context: zmq.Context | None = None) -> None:
        self.config = config
        self.db = database
        self.service = service
        self.content = content
        self.started = time.time()
        self.stats: Counter[str] = Counter()
        self._ctx = context or zmq.Context.instance()
        self._router: zmq.Socket | None = None
        self._zap: ZapHandler | None = None
        self.events = EventHub(config.bus.events, self._ctx, service=SERVICE)
        self._bound: list[str] = []
        self.retries = RetryCache()
        self.commits = CommitScheduler(database, service, self.stats, answer=self._answer,
                                       publish=self._publish, drain=self._drain,
                                       crash=self._crash)
        self.dispatcher = ContentDispatcher(content, config.ipfs.timeout, self.stats,
                                            self._content_answered)
        self._stopped: asyncio.Future[None] | None = None

    @property
    def ready(self) -> bool:
        """False while memory is rebuilt after a failed write (leases are refused)."""
        return self.commits.ready

    # -- lifecycle ----------------------------------------------------------------

    def bind(self) -> None:
        secret = server_secret(self.config)
        if secret is not None:
            # Clients are authenticated by the ZAP handler before any frame of
            # theirs reaches this process's sockets.
            self._zap = ZapHandler(self._ctx, self.config.bus.keys)
            self._zap.start()
        router = request_socket(self._ctx, hwm=100_000)
        if secret is not None:
            make_server(router, secret)
        self._router = router
        bind(router, self.config.bus.endpoint, SERVICE)
        self._bound.append(self.config.bus.endpoint)
        self.events.bind(secret)
        self._bound.append(self.config.bus.events)

    def close(self) -> None:
        self.dispatcher.close()
        self.commits.close()
        self.events.close()
        if self._router is not None:
            self._router.close(linger=0)
        if self._zap is not None:
            self._zap.close()
            self._zap = None
        for endpoint in self._bound:  # only ours: never another store's socket file
            path = ipc_path(endpoint)
            if path is not None:
                path.unlink(missing_ok=True)
        self._bound.clear()
        self._router = None

    async def serve(self) -> None:
        """Answer requests until cancelled; then finish the batch being written.

        The ROUTER is a plain socket whose ZMQ_FD sits in the event loop:
        that FD is edge-triggered, so every wake-up reads until nothing is
        left (see :meth:`_drain`), which also keeps per-message overhead to a
        few backend calls.
        """
        assert self._router is not None, "bind() first"
        loop = asyncio.get_running_loop()
        fd = int(self._router.get(zmq.FD))
        self.commits.start(loop)
        self._stopped = loop.create_future()
        loop.add_reader(fd, self._drain)
        events_fd = self.events.start(loop)
        try:
            self._drain()  # frames that arrived before the reader was added
            await self._stopped  # until cancelled, or a bug in a callback
        finally:
            loop.remove_reader(fd)
            loop.remove_reader(events_fd)
            await self.commits.finish()

    def _drain(self) -> None:
        """Handle every frame waiting, then start a commit if one is due.

        Called on each wake-up and after every send made outside it: a send
        can swallow the edge-triggered wake-up for frames that arrived
        meanwhile, so whoever sends also looks for them.
        """
        sock = self._router
        if sock is None:
            return
        for _ in range(DRAIN):
            # Asking ZMQ_EVENTS (not catching EAGAIN) also re-arms the FD.
            if not int(_get(sock, _EVENTS)) & _POLLIN:
                break
            if self._zap is None:
                frames = [_recv(sock, _NOBLOCK)]
                while _get(sock, _RCVMORE):
                    frames.append(_recv(sock, _NOBLOCK))
                self._on_frames(frames)
                continue
            parts = [_recv(sock, _NOBLOCK, False)]
            while _get(sock, _RCVMORE):
                parts.append(_recv(sock, _NOBLOCK, False))
            self._on_frames([p.bytes for p in parts], role_of(parts[-1].get("User-Id")))
        else:  # more may be waiting: come back after others had a turn
            asyncio.get_running_loop().call_soon(self._drain)
        self.commits.flush()

    def _crash(self, failure: BaseException) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_exception(failure)

    # -- requests -----------------------------------------------------------------

    def _on_frames(self, frames: list[bytes], role: str | None = None) -> None:
        incoming, answer = decode(frames, self.stats)
        if incoming is None:
            if answer is not None:
                self._send(answer)
            return
        request = incoming.request
        if role is not None and not may_send(role, request.kind):
            # A CURVE peer asking for what its role does not need (a tftpd key
            # sending MachineSet): refused, counted, applied never.
            self.stats["forbidden"] += 1
            if request.expects_reply:
                self._reply(incoming, error(ErrorCode.FORBIDDEN,
                                            f"a {role} key may not send {request.kind}"))
            return
        if request.expects_reply:
            key = request_key(incoming)
            retries = self.retries
            body = retries.recent.get(key)
            if body is not None:
                self.stats["retries_answered"] += 1
                self._send(incoming.envelope + [body])
                return
            waiting = retries.waiting.get(key)
            if waiting is not None:
                self.stats["retries_joined"] += 1
                waiting.envelopes.append(incoming.envelope)
                return
        kind = type(request)
        if kind is Health:
            self._reply(incoming, self._health())
        elif kind is ContentStat or kind is ContentList or kind is ContentRead:
            reply = self.dispatcher.dispatch(incoming)
            if reply is not None:
                self._reply(incoming, reply)
        elif not self.commits.ready:
            self.stats["refused_rebuilding"] += 1
            if request.expects_reply:
                self._reply(incoming, error(ErrorCode.UNAVAILABLE,
                                            "the store is reloading its state; try again"))
        else:
            self._apply(incoming, self.service.handle(request, time.time()))

    def _apply(self, incoming: Incoming, result: Result) -> None:
        request = incoming.request
        pending = self.commits.pending
        if result.background:
            pending.add(result.background)
        if result.read is not None:  # answered after the writes before it
            waiting = Waiting(request_key(incoming), incoming.envelope, None)
            self.retries.waiting[waiting.key] = waiting
            pending.add_read(result.read, waiting)
            return
        if result.writes and request.expects_reply:  # answered once durable
            waiting = Waiting(request_key(incoming), incoming.envelope, result.reply,
                              result.publish)
            self.retries.waiting[waiting.key] = waiting
            pending.add(result.writes, waiting)
            return
        if result.writes:
            pending.add(result.writes)
        if result.publish is not None:
            self._publish(result.publish)
        if request.expects_reply:
            assert result.reply is not None, f"no reply for {request.kind}"
            self._reply(incoming, result.reply)
        elif isinstance(request, EventReport) and result.publish is None:
            self.stats["events_dropped"] += 1

    def _reply(self, incoming: Incoming, reply: Reply) -> None:
        self._send(encode(incoming, reply))

    def _send(self, frames: list[bytes]) -> None:
        sock = self._router
        assert sock is not None
        try:
            for frame in frames[:-1]:
                _send(sock, frame, _MORE)
            _send(sock, frames[-1], _NOBLOCK)
        except zmq.Again:  # a ROUTER drops rather than blocks; kept for safety
            self.stats["replies_dropped"] += 1

    def _publish(self, event: Any) -> None:
        self.events.publish(event)

    def _answer(self, waiting: Waiting, reply: Reply, remember: bool) -> None:
        """Answer a request whose batch is done (every retry that joined it too)."""
        body = pack(reply, waiting.request_id)
        for envelope in waiting.envelopes:
            self._send(envelope + [body])
        self.retries.settle(waiting, body, remember)

    def _content_answered(self, incoming: Incoming, reply: Reply) -> None:
        if self._router is not None:  # not closed while the worker ran
            self._reply(incoming, reply)
            self._drain()

    # -- health -------------------------------------------------------------------

    def _health(self) -> Reply:
        commits = self.commits
        ready = commits.ready
        details: dict[str, str | int | float | bool] = {"ready": ready}
        details.update(self.service.details(time.time()))
        details["database"] = describe(self.config.store.database)
        details["content"] = self.content.source.description
        details["commit.batches"] = self.stats["batches"]
        details["commit.changes"] = self.stats["batched_changes"]
        details["commit.max_batch"] = commits.max_batch
        details["commit.last_ms"] = round(commits.last_commit_ms, 3)
        details["commit.max_ms"] = round(commits.max_commit_ms, 3)
        details.update(self.events.details())
        details["forbidden"] = self.stats["forbidden"]
        if self._zap is not None:
            details["curve.admitted"] = self._zap.admitted
            details["curve.refused"] = self._zap.refused
        details["commit.pending"] = len(commits.pending.changes)
        for key in ("requests", "malformed", "dropped_frames", "retries_answered",
                    "retries_joined", "batches_failed", "rebuilds", "replies_dropped",
                    "content.requests", "content.quick", "content.timeouts"):
            details[key] = self.stats[key]
        details.update({f"content.{k}": v for k, v in self.content.stats.items()})
        cache = self.content.cache
        if cache.max_bytes:
            details["content.cache_max"] = cache.max_bytes
            details["content.evicted"] = cache.evicted
            details["content.evicted_bytes"] = cache.evicted_bytes
        return health_reply(SERVICE, self.started, details,
                            status="ok" if ready else "degraded")
