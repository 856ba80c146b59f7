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
