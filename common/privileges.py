"""Giving up root once the privileged ports are bound.

``astralboot serve`` (and each service started as root by hand) binds what
needs root first (DHCP 67, TFTP 69, HTTP 80, dhcpd's packet socket for
address-less clients), then becomes ``[service] user`` for good: gunicorn,
Jinja2, the msgpack decoder and the database driver never run as root.
Sockets already open keep working; what the service writes later (its
runtime folder, the store's database and cache) is handed to that user
first.
"""

from __future__ import annotations

import logging
import os
import pwd
from pathlib import Path
from typing import Iterable

from astralboot.common.config import Config
from astralboot.common.errors import StartupError

log = logging.getLogger(__name__)


def drop(config: Config, service: str, owned: Iterable["Path | Only"] = ()) -> str | None:
    """Become ``[service] user`` if running as root; returns the user, or None if not dropped.

    ``owned``: files and folders the service goes on writing, given to the
    user first (folders with everything in them).
    """
    if os.geteuid() != 0:
        return None
    name = config.service.user
    if not name or name == "root":
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if "service.user" in config.derived:
            log.warning("%s runs as root: there is no user %s to give up root to (create it, "
                        "or set [service] user)", service, name)
            return None
        raise StartupError(service, f"[service] user: no such user {name!r}") from None
    for path in owned:
        _give(path, entry.pw_uid, entry.pw_gid)
    try:
        os.initgroups(name, entry.pw_gid)
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    except OSError as exc:
        raise StartupError(service, f"cannot become {name}: {exc.strerror}") from None
    os.environ["HOME"] = entry.pw_dir
    log.info("%s now runs as %s (uid %d)", service, name, entry.pw_uid)
    return name


class Only:
    """A folder to give without what is in it (the database's folder may be the data folder)."""

    def __init__(self, path: Path) -> None:
        self.path = path


def _give(path: "Path | Only", uid: int, gid: int) -> None:
    recursive = not isinstance(path, Only)
    path = path.path if isinstance(path, Only) else path
    if not path.exists():
        return
    paths = [path]
    if recursive and path.is_dir():
        for root, dirs, files in os.walk(path):
            paths += [Path(root, n) for n in dirs + files]
    for p in paths:
        try:
            st = p.lstat()
            if (st.st_uid, st.st_gid) != (uid, gid):
                os.lchown(p, uid, gid)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StartupError("privileges", f"cannot give {p} to uid {uid}: "
                                             f"{exc.strerror}") from None


def ipc_files(*endpoints: str) -> list[Path]:
    """The socket files of ``ipc://`` endpoints (clients running as the user must connect)."""
    return [Path(e[len("ipc://"):]) for e in endpoints if e.startswith("ipc://")]


def database_files(url: str) -> list["Path | Only"]:
    """An SQLite database's file, journal files and folder; nothing for a server URL."""
    if not url.startswith("sqlite:///"):
        return []
    db = Path(url[len("sqlite:///"):])
    return [Only(db.parent), db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
