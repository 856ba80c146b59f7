"""The group commit: when the writes of decided requests go to the database.

Writes of every request that arrives while a transaction is being committed
wait in the next :class:`Batch`; when the database thread is free the whole
batch goes in one transaction, and only after it is durable are its
requests answered. A failed transaction answers its requests
``unavailable`` and rebuilds the in-memory state from the database before
leases are served again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any, Callable

from astralboot.common.bus.schema import Reply
from astralboot.common.bus.server import error
from astralboot.common.errors import ErrorCode
from astralboot.common.messages import BootEvent

from astralboot.services.store.database import Database, DatabaseUnavailable
from astralboot.services.store.journal import Batch, BatchOutcome
from astralboot.services.store.retries import Waiting
from astralboot.services.store.service import StoreService
from astralboot.services.store.worker import DatabaseThread

log = logging.getLogger(__name__)

MAX_BATCH = 500  # changes per transaction
REBUILD_RETRY = 1.0
SLOW_COMMIT = 0.25  # seconds; a commit this slow holds every waiting ACK back

Answer = Callable[[Waiting, Reply, bool], None]  # (request, reply, remember for retries)


class CommitScheduler:
    """Collects writes into batches and commits one batch at a time.

    The server adds to :attr:`pending` and calls :meth:`flush` after each
    wake-up; the scheduler calls back ``answer`` for every request of a
    batch once it is durable (or failed), ``publish`` for the events those
    requests announce, ``drain`` after each commit (its sends may have
    swallowed a wake-up) and ``crash`` with an error that is a bug.
    """

    def __init__(self, database: Database, service: StoreService, stats: Counter[str], *,
                 answer: Answer, publish: Callable[[BootEvent], None],
                 drain: Callable[[], None], crash: Callable[[BaseException], None]) -> None:
        self.db = database
        self.service = service
        self.stats = stats  # the server's counters, shown by health
        self.pending = Batch()
        self.ready = True  # False while memory is rebuilt after a failed write
        self.max_batch = 0
        self.last_commit_ms = 0.0
        self.max_commit_ms = 0.0
        self._answer = answer
        self._publish = publish
        self._drain = drain
        self._crash = crash
        self._writing = False
        self._idle = asyncio.Event()
        self._db_thread: DatabaseThread | None = None  # started by start()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the database thread (and SQLite's checkpoints) for ``loop``."""
        self._idle.set()
        self._db_thread = DatabaseThread(loop)
        self.db.start_checkpoints()

    def close(self) -> None:
        if self._db_thread is not None:
            self._db_thread.close()
            self._db_thread = None

    async def finish(self) -> None:
        """Write the batch being written, then whatever waited for it."""
        for _ in range(2):
            if self._writing:
                try:
                    await asyncio.wait_for(self._idle.wait(), timeout=30)
                except TimeoutError:
                    log.error("gave up waiting for the database at shutdown")
                    return
            self.flush()
        if self._writing:
            await asyncio.wait_for(self._idle.wait(), timeout=30)

    def flush(self) -> None:
        """Send the pending batch to the database thread, unless one is being written."""
        if self._writing or not self.pending:
            return
        pending = self.pending
        if len(pending.changes) > MAX_BATCH:
            # A bounded transaction keeps each commit (and the burst of ACKs it
            # frees) short; the rest, and any reads that must follow it, go next.
            batch = Batch(changes=pending.changes[:MAX_BATCH])
            self.pending = Batch(changes=pending.changes[MAX_BATCH:], reads=pending.reads,
                                 read_tokens=pending.read_tokens)
        else:
            batch, self.pending = pending, Batch()
        self._writing = True
        self._idle.clear()
        assert self._db_thread is not None
        self._db_thread.submit(lambda: self.db.apply(batch),
                               lambda outcome, error: self._committed(batch, outcome, error))

    def _committed(self, batch: Batch, outcome: BatchOutcome | None,
                   failure: BaseException | None) -> None:
        self._writing = False
        self._idle.set()
        if failure is not None and not isinstance(failure, DatabaseUnavailable):
            self._crash(failure)  # a bug: the supervisor restarts the store
            return
        if failure is not None or outcome is None:
            log.error("%s; answering %d requests unavailable and reloading state",
                      failure, len(batch.changes) + len(batch.reads))
            self.stats["batches_failed"] += 1
            self._fail(batch, str(failure))
            self._rebuild()
            self._drain()
            return
        self.stats["batches"] += 1
        self.stats["batched_changes"] += len(batch.changes)
        self.max_batch = max(self.max_batch, len(batch.changes))
        self.last_commit_ms = outcome.seconds * 1000
        self.max_commit_ms = max(self.max_commit_ms, self.last_commit_ms)
        if outcome.seconds > SLOW_COMMIT:
            self.stats["commit.slow"] += 1
            log.info("a commit of %d changes took %.0f ms", len(batch.changes),
                     self.last_commit_ms)
        answer = self._answer
        for i, change in enumerate(batch.changes):
            waiting = change.token
            if waiting is None:
                continue
            if i in outcome.failed:
                answer(waiting, error(ErrorCode.CONFLICT, "the database refused the change"), True)
            else:
                answer(waiting, waiting.reply, True)
                if waiting.publish is not None:
                    self._publish(waiting.publish)
        for waiting, result in zip(batch.read_tokens, outcome.reads, strict=True):
            reply = (error(ErrorCode.UNAVAILABLE, str(result))
                     if isinstance(result, Exception) else result)
            answer(waiting, reply, False)
        if outcome.failed:
            # Memory decided something the database would not take: what was
            # decided on top of it since cannot be trusted either.
            self.stats["changes_refused"] += len(outcome.failed)
            self._fail(self.pending, "the store is reloading its state; try again")
            self.pending = Batch()
            self._rebuild()
        self._drain()

    def _fail(self, batch: Batch, detail: str) -> None:
        reply = error(ErrorCode.UNAVAILABLE, detail)
        for change in batch.changes:
            if change.token is not None:
                self._answer(change.token, reply, False)
        for waiting in batch.read_tokens:
            self._answer(waiting, reply, False)
        if batch is not self.pending:
            self._fail(self.pending, detail)
            self.pending = Batch()

    def _rebuild(self) -> None:
        self.ready = False
        loop = asyncio.get_running_loop()

        def done(snapshot: Any, failure: BaseException | None) -> None:
            if failure is not None:  # database still down: try again shortly
                log.warning("cannot reload state yet: %s", failure)
                self.stats["rebuild_retries"] += 1
                loop.call_later(REBUILD_RETRY, self._rebuild)
                return
            self.service.load(snapshot)
            self.ready = True
            self.stats["rebuilds"] += 1
            log.info("state reloaded from the database")
        assert self._db_thread is not None
        self._db_thread.submit(self.db.load, done)
