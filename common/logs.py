"""Logging set-up; only the CLI calls :func:`configure`.

Modules log through ``logging.getLogger(__name__)`` with lazy ``%s``
arguments and put the MAC, xid or request id in the line. Under systemd
the timestamp is left to the journal.
"""

from __future__ import annotations

import logging
import os
import sys

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}

VERBOSITY = {1: "info", 2: "debug", 3: "trace"}


def level_for(config_level: str, verbose: int) -> str:
    """``-v`` flags win over the config's log_level."""
    return VERBOSITY[min(verbose, 3)] if verbose else config_level


def configure(level: str, service: str | None = None) -> None:
    tag = f"{service} " if service else ""
    if os.environ.get("JOURNAL_STREAM"):
        fmt = f"{tag}%(levelname)s %(name)s: %(message)s"
    else:
        fmt = f"%(asctime)s {tag}%(levelname)s %(name)s: %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    # Third-party chatter stays at warning unless tracing.
    quiet = logging.WARNING if LEVELS[level] > TRACE else logging.DEBUG
    for name in ("urllib3", "ipfshttpclient", "alembic", "sqlalchemy", "gunicorn.access"):
        logging.getLogger(name).setLevel(max(quiet, LEVELS[level]))


class SenderLimit:
    """Rate limit for log lines a network peer can cause (one per sender per period).

    A DECLINE flood or a fuzzer must not flood the log: the first line from
    a sender is logged, further ones within ``period`` seconds are only
    counted, and the next line logged for that sender says how many were
    held back. A sender is only what the packet claims (a MAC is made up at
    will), so all senders together get at most ``overall`` lines a period
    too. At most ``senders`` are remembered (the oldest is forgotten first),
    so a flood from random addresses costs bounded memory.
    """

    def __init__(self, period: float = 60.0, senders: int = 4096, overall: int = 100) -> None:
        self.period = period
        self.senders = senders
        self.overall = overall
        self.suppressed_total = 0
        self._seen: dict[object, list[float | int]] = {}  # sender -> [last logged, held back]
        self._window = (float("-inf"), 0)  # (start, lines logged in it)

    def allow(self, sender: object, now: float) -> tuple[bool, int]:
        """Whether to log for ``sender`` now, and how many lines were held back before it."""
        entry = self._seen.get(sender)
        if entry is not None and now - entry[0] < self.period:
            entry[1] += 1
            self.suppressed_total += 1
            return False, 0
        start, logged = self._window
        if now - start >= self.period:
            start, logged = now, 0
        if logged >= self.overall:
            self.suppressed_total += 1
            return False, 0
        self._window = (start, logged + 1)
        held = int(entry[1]) if entry is not None else 0
        if entry is not None:
            del self._seen[sender]  # re-inserted last: dicts keep insertion order
        elif len(self._seen) >= self.senders:
            del self._seen[next(iter(self._seen))]
        self._seen[sender] = [now, 0]
        return True, held

    def log(self, logger: logging.Logger, level: int, sender: object, now: float,
            msg: str, *args: object) -> bool:
        """Log ``msg % args`` for ``sender`` unless it is held back; True if logged."""
        ok, held = self.allow(sender, now)
        if ok:
            if held:
                msg += " (%d more from this sender held back)"
                args = (*args, held)
            logger.log(level, msg, *args)
        return ok
