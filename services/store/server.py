"""The store process: sockets, the database thread, content workers, signals.

It decides nothing itself: lease, machine and event requests go to
:class:`StoreService` (in memory, on the event loop), content requests to
:class:`ContentStore` (in worker threads). What it owns is *when* things
happen:

- **Group commit.** Writes of every request that arrives while a
  transaction is being committed wait in the next :class:`Batch`; when the
  database thread is free the whole batch goes in one transaction, and
  only after it is durable are its requests answered.
- **Retries.** A client that retries sends the same request id; a retried
  write is answered with the first reply (or joins the one still being
  written) instead of being applied twice.
- **Failure.** A failed transaction answers its requests ``unavailable``
  and rebuilds the in-memory state from the database before serving
  leases again.
- **Content never blocks the loop**: a fetch runs in a worker; its request
  is answered ``unavailable`` when ``ipfs.timeout`` passes (the fetch goes
  on, so asking again finds the file).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import zmq
from zmq.backend import Socket as _BackendSocket

from astralboot.common.bus.frames import pack
from astralboot.common.bus.schema import Reply
from astralboot.common.bus.security import (ZapHandler, make_server, may_send, role_of,
                                            server_secret)
from astralboot.common.bus.server import (Incoming, bind, decode, encode, health_reply, ipc_path,
                                          request_socket)
from astralboot.common.config import Config
from astralboot.common.content import DigestCache
from astralboot.common.errors import ErrorCode, StartupError
from astralboot.common.frontend import settle_heap
from astralboot.common.privileges import database_files, drop, ipc_files
from astralboot.common.messages import (BootEvent, ContentDataReply, ContentList,
                                        ContentListReply, ContentRead, ContentStat,
                                        ContentStatReply, ErrorReply, EventReport, Health)

from .content import ContentStore
from .database import Database, DatabaseUnavailable, create_engine, describe, migrate
from .eventhub import EventHub
from .journal import Batch, BatchOutcome
from .service import Result, StoreService
from .worker import DatabaseThread
from .sources import (BadPath, ContentError, ContentMissing, IpfsFolder, LocalFolder, Source)

log = logging.getLogger(__name__)

SERVICE = "store"
RECENT_REPLIES = 65536  # answers to writes kept for retried requests
DRAIN = 2000  # frames handled per wake-up before yielding to the loop
REBUILD_RETRY = 1.0
CONTENT_WORKERS = 4
MAX_BATCH = 500  # changes per transaction
SWITCH_INTERVAL = 0.001  # seconds a thread may hold the GIL while another waits
SLOW_COMMIT = 0.25  # seconds; a commit this slow holds every waiting ACK back

_CONTENT_CODES = {BadPath: ErrorCode.BAD_REQUEST, ContentMissing: ErrorCode.NOT_FOUND}

# The hot path calls pyzmq's backend methods directly: the convenience layer
# (flag enums, send_multipart) costs ~35 µs a message, the calls below ~3.
_send = _BackendSocket.send
_recv = _BackendSocket.recv
_get = _BackendSocket.get
_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.SNDMORE) | _NOBLOCK
_RCVMORE = int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def _error(code: ErrorCode, detail: str) -> ErrorReply:
    return ErrorReply(code=code.value, detail=detail)


def content_error(exc: ContentError) -> ErrorReply:
    return _error(_CONTENT_CODES.get(type(exc), ErrorCode.UNAVAILABLE), str(exc))


Key = tuple[bytes, int]  # (the peer's routing identity, its request id)


def request_key(incoming: Incoming) -> Key:
    """Whose request this is: a request id means something only with its peer.

    Ids are unique per client, not across clients, so a retry is recognised
    (and answered from memory) only when the same peer sends the same id;
    another peer sending that id is a new request, never a way to read the
    first one's answer.
    """
    return (incoming.envelope[0], incoming.request.request_id)


class Waiting:
    """A request whose reply waits for its batch to be durable."""

    __slots__ = ("key", "request_id", "envelopes", "reply", "publish")

    def __init__(self, key: Key, envelope: list[bytes], reply: Reply | None,
                 publish: BootEvent | None = None) -> None:
        self.key = key
        self.request_id = key[1]
        self.envelopes = [envelope]
        self.reply = reply
        self.publish = publish  # the event to announce once it is durable


class StoreServer:
    def __init__(self, config: Config, database: Database, service: StoreService,
                 content: ContentStore, context: zmq.Context | None = None) -> None:
        self.config = config
        self.db = database
        self.service = service
        self.content = content
        self.started = time.time()
        self.stats: Counter[str] = Counter()
        self.ready = True  # False while memory is rebuilt after a failed write
        self._ctx = context or zmq.Context.instance()
        self._router: zmq.Socket | None = None
        self._zap: ZapHandler | None = None
        self.events = EventHub(config.bus.events, self._ctx, service=SERVICE)
        self._bound: list[str] = []
        self._pending = Batch()
        self._writing = False
        self._idle = asyncio.Event()
        self._waiting: dict[Key, Waiting] = {}
        self._recent: OrderedDict[Key, bytes] = OrderedDict()
        self._db_thread: DatabaseThread | None = None  # started by serve()
        self._stopped: asyncio.Future[None] | None = None
        self._content_pool = ThreadPoolExecutor(CONTENT_WORKERS, thread_name_prefix="store-content")
        self._content_jobs: dict[tuple[str, str], asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._batch_sizes: Counter[str] = Counter()
        self._last_commit_ms = 0.0
        self._max_commit_ms = 0.0

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
        self._content_pool.shutdown(wait=False, cancel_futures=True)
        if self._db_thread is not None:
            self._db_thread.close()
            self._db_thread = None
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
        self._idle.set()
        self._db_thread = DatabaseThread(loop)
        self.db.start_checkpoints()
        self._stopped = loop.create_future()
        loop.add_reader(fd, self._drain)
        events_fd = self.events.start(loop)
        try:
            self._drain()  # frames that arrived before the reader was added
            await self._stopped  # until cancelled, or a bug in a callback
        finally:
            loop.remove_reader(fd)
            loop.remove_reader(events_fd)
            await self._finish_writes()

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
        self._flush()

    async def _finish_writes(self) -> None:
        for _ in range(2):  # the batch being written, then whatever waited for it
            if self._writing:
                try:
                    await asyncio.wait_for(self._idle.wait(), timeout=30)
                except TimeoutError:
                    log.error("gave up waiting for the database at shutdown")
                    return
            self._flush()
        if self._writing:
            await asyncio.wait_for(self._idle.wait(), timeout=30)

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
                self._reply(incoming, _error(ErrorCode.FORBIDDEN,
                                             f"a {role} key may not send {request.kind}"))
            return
        if request.expects_reply:
            key = request_key(incoming)
            body = self._recent.get(key)
            if body is not None:
                self.stats["retries_answered"] += 1
                self._send(incoming.envelope + [body])
                return
            waiting = self._waiting.get(key)
            if waiting is not None:
                self.stats["retries_joined"] += 1
                waiting.envelopes.append(incoming.envelope)
                return
        kind = type(request)
        if kind is Health:
            self._reply(incoming, self._health())
        elif kind is ContentStat or kind is ContentList or kind is ContentRead:
            self._content(incoming)
        elif not self.ready:
            self.stats["refused_rebuilding"] += 1
            if request.expects_reply:
                self._reply(incoming, _error(ErrorCode.UNAVAILABLE,
                                             "the store is reloading its state; try again"))
        else:
            self._apply(incoming, self.service.handle(request, time.time()))

    def _apply(self, incoming: Incoming, result: Result) -> None:
        request = incoming.request
        if result.background:
            self._pending.add(result.background)
        if result.read is not None:  # answered after the writes before it
            waiting = Waiting(request_key(incoming), incoming.envelope, None)
            self._waiting[waiting.key] = waiting
            self._pending.add_read(result.read, waiting)
            return
        if result.writes and request.expects_reply:  # answered once durable
            waiting = Waiting(request_key(incoming), incoming.envelope, result.reply,
                              result.publish)
            self._waiting[waiting.key] = waiting
            self._pending.add(result.writes, waiting)
            return
        if result.writes:
            self._pending.add(result.writes)
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
        body = pack(reply, waiting.request_id)
        for envelope in waiting.envelopes:
            self._send(envelope + [body])
        self._waiting.pop(waiting.key, None)
        if remember:
            self._recent[waiting.key] = body
            if len(self._recent) > RECENT_REPLIES:
                self._recent.popitem(last=False)

    # -- group commit -------------------------------------------------------------

    def _flush(self) -> None:
        if self._writing or not self._pending:
            return
        pending = self._pending
        if len(pending.changes) > MAX_BATCH:
            # A bounded transaction keeps each commit (and the burst of ACKs it
            # frees) short; the rest, and any reads that must follow it, go next.
            batch = Batch(changes=pending.changes[:MAX_BATCH])
            self._pending = Batch(changes=pending.changes[MAX_BATCH:], reads=pending.reads,
                                  read_tokens=pending.read_tokens)
        else:
            batch, self._pending = pending, Batch()
        self._writing = True
        self._idle.clear()
        assert self._db_thread is not None
        self._db_thread.submit(lambda: self.db.apply(batch),
                               lambda outcome, error: self._committed(batch, outcome, error))

    def _committed(self, batch: Batch, outcome: BatchOutcome | None,
                   error: BaseException | None) -> None:
        self._writing = False
        self._idle.set()
        if error is not None and not isinstance(error, DatabaseUnavailable):
            self._crash(error)  # a bug: the supervisor restarts the store
            return
        if error is not None or outcome is None:
            log.error("%s; answering %d requests unavailable and reloading state",
                      error, len(batch.changes) + len(batch.reads))
            self.stats["batches_failed"] += 1
            self._fail(batch, str(error))
            self._rebuild()
            self._drain()
            return
        self.stats["batches"] += 1
        self.stats["batched_changes"] += len(batch.changes)
        self._batch_sizes["max"] = max(self._batch_sizes["max"], len(batch.changes))
        self._last_commit_ms = outcome.seconds * 1000
        self._max_commit_ms = max(self._max_commit_ms, self._last_commit_ms)
        if outcome.seconds > SLOW_COMMIT:
            self.stats["commit.slow"] += 1
            log.info("a commit of %d changes took %.0f ms", len(batch.changes),
                     self._last_commit_ms)
        for i, change in enumerate(batch.changes):
            waiting = change.token
            if waiting is None:
                continue
            if i in outcome.failed:
                self._answer(waiting, _error(ErrorCode.CONFLICT,
                                             "the database refused the change"), remember=True)
            else:
                self._answer(waiting, waiting.reply, remember=True)
                if waiting.publish is not None:
                    self._publish(waiting.publish)
        for waiting, result in zip(batch.read_tokens, outcome.reads, strict=True):
            reply = (_error(ErrorCode.UNAVAILABLE, str(result))
                     if isinstance(result, Exception) else result)
            self._answer(waiting, reply, remember=False)
        if outcome.failed:
            # Memory decided something the database would not take: what was
            # decided on top of it since cannot be trusted either.
            self.stats["changes_refused"] += len(outcome.failed)
            self._fail(self._pending, "the store is reloading its state; try again")
            self._pending = Batch()
            self._rebuild()
        self._drain()

    def _fail(self, batch: Batch, detail: str) -> None:
        reply = _error(ErrorCode.UNAVAILABLE, detail)
        for change in batch.changes:
            if change.token is not None:
                self._answer(change.token, reply, remember=False)
        for waiting in batch.read_tokens:
            self._answer(waiting, reply, remember=False)
        if batch is not self._pending:
            self._fail(self._pending, detail)
            self._pending = Batch()

    def _rebuild(self) -> None:
        self.ready = False
        loop = asyncio.get_running_loop()

        def done(snapshot: Any, error: BaseException | None) -> None:
            if error is not None:  # database still down: try again shortly
                log.warning("cannot reload state yet: %s", error)
                self.stats["rebuild_retries"] += 1
                loop.call_later(REBUILD_RETRY, self._rebuild)
                return
            self.service.load(snapshot)
            self.ready = True
            self.stats["rebuilds"] += 1
            log.info("state reloaded from the database")
        assert self._db_thread is not None
        self._db_thread.submit(self.db.load, done)

    def _crash(self, error: BaseException) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_exception(error)

    # -- content ------------------------------------------------------------------

    def _content(self, incoming: Incoming) -> None:
        request = incoming.request
        job: Callable[[], Reply]
        if isinstance(request, ContentStat):
            try:
                entry = self.content.quick_stat(request.path)
            except ContentError as exc:
                self._reply(incoming, content_error(exc))
                return
            if entry is not None:
                self.stats["content.quick"] += 1
                self._reply(incoming, ContentStatReply(entry=entry))
                return
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
        future = self._content_jobs.get(key)
        if future is None:
            future = asyncio.get_running_loop().run_in_executor(self._content_pool, job)
            self._content_jobs[key] = future
            future.add_done_callback(lambda _f: self._content_jobs.pop(key, None))
        task = asyncio.get_running_loop().create_task(self._content_reply(incoming, future))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _content_reply(self, incoming: Incoming, future: asyncio.Future[Reply]) -> None:
        timeout = self.config.ipfs.timeout
        try:
            reply = await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            self.stats["content.timeouts"] += 1
            reply = _error(ErrorCode.UNAVAILABLE,
                           f"{incoming.request.kind}: no answer from "
                           f"{self.content.source.description} within {timeout:g}s "
                           "(still trying; ask again)")
        except ContentError as exc:
            reply = content_error(exc)
        except OSError as exc:
            log.error("content request failed: %s", exc)
            reply = _error(ErrorCode.UNAVAILABLE, f"cache: {exc}")
        except Exception as exc:  # a bug: say so to the caller and in the log
            log.exception("content request %s failed", incoming.request.kind)
            reply = _error(ErrorCode.INTERNAL, f"{exc.__class__.__name__}: {exc}")
        self.stats["content.requests"] += 1
        if self._router is not None:
            self._reply(incoming, reply)
            self._drain()

    # -- health -------------------------------------------------------------------

    def _health(self) -> Reply:
        details: dict[str, str | int | float | bool] = {"ready": self.ready}
        details.update(self.service.details(time.time()))
        details["database"] = describe(self.config.store.database)
        details["content"] = self.content.source.description
        details["commit.batches"] = self.stats["batches"]
        details["commit.changes"] = self.stats["batched_changes"]
        details["commit.max_batch"] = self._batch_sizes["max"]
        details["commit.last_ms"] = round(self._last_commit_ms, 3)
        details["commit.max_ms"] = round(self._max_commit_ms, 3)
        details.update(self.events.details())
        details["forbidden"] = self.stats["forbidden"]
        if self._zap is not None:
            details["curve.admitted"] = self._zap.admitted
            details["curve.refused"] = self._zap.refused
        details["commit.pending"] = len(self._pending.changes)
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
                            status="ok" if self.ready else "degraded")


# -- entry point -------------------------------------------------------------------


def content_source(config: Config) -> Source:
    if config.ipfs.enabled:
        return IpfsFolder(config.ipfs.api, config.ipfs.root, config.ipfs.timeout)
    return LocalFolder(config.data)


def open_database(config: Config) -> Database:
    """Connect, migrate to the newest schema, record the pools; or StartupError."""
    url = config.store.database
    try:
        engine = create_engine(url)
        migrate(engine)
        database = Database(engine)
        database.sync_pools(config.dhcp.subnets)
    except Exception as exc:  # any driver error at start-up is the operator's to see
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise StartupError(SERVICE, f"database {describe(url)} ([store] database): "
                                    f"{reason}") from exc
    return database


def add_token(database: Database, name: str, scope: str, digest: str) -> bool:
    """Record an admin token straight in the database (``init``, before any store runs).

    False if a token of that name exists already.
    """
    from sqlalchemy import insert, select

    from .models import tokens
    with database.engine.begin() as conn:
        if conn.execute(select(tokens.c.name).where(tokens.c.name == name)).first():
            return False
        conn.execute(insert(tokens).values(name=name, scope=scope, digest=digest,
                                           created=time.time()))
    return True


def build(config: Config) -> StoreServer:
    database = open_database(config)
    service = StoreService(config)
    try:
        service.load(database.load())
    except Exception as exc:
        database.close()
        raise StartupError(SERVICE, f"cannot load state from {describe(config.store.database)}: "
                                    f"{exc}") from exc
    cache = DigestCache(config.store.cache, config.store.cache_max)
    try:
        config.store.cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        database.close()
        raise StartupError(SERVICE, f"cannot create cache folder {config.store.cache} ([store] "
                                    "cache): "
                                    f"{exc.strerror}") from None
    cache.remove_stale_temporaries()
    return StoreServer(config, database, service, ContentStore(content_source(config), cache))


def run(config: Config) -> int:
    """Serve until SIGINT/SIGTERM; 0 on a clean stop, StartupError if it cannot start."""
    return asyncio.run(_main(config))


async def _main(config: Config) -> int:
    server = build(config)
    settle_heap()  # every lease and machine is in memory now: keep the collector off them
    # The database thread needs the GIL back after each statement; with the
    # event loop busy, the default 5 ms turn makes commits (and their ACKs) wait.
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        server.bind()
        drop(config, SERVICE, [config.runtime_dir, config.store.cache,
                               *database_files(config.store.database),
                               *ipc_files(config.bus.endpoint, config.bus.events)])
    except StartupError:
        server.close()
        server.db.close()
        raise
    loop = asyncio.get_running_loop()
    serving = loop.create_task(server.serve(), name="store")

    def stop(signame: str) -> None:
        log.info("store: %s received, stopping", signame)
        serving.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig.name)
    log.info("store serving %s (events %s), database %s, content from %s",
             config.bus.endpoint, config.bus.events, describe(config.store.database),
             server.content.source.description)
    try:
        await serving
    except asyncio.CancelledError:
        pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        server.close()
        server.db.close()
    log.info("store stopped")
    return 0
