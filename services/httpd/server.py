"""``astralboot httpd``: the falcon app under gunicorn, until SIGINT/SIGTERM.

The listening socket is bound here, before gunicorn starts, so "port in
use" and "permission denied" become a :class:`StartupError` with the reason
(exit status 2) instead of gunicorn's retry loop; gunicorn takes the socket
over as ``fd://N``. The app is built once in the master (``preload_app``)
and forked into ``http.workers`` processes of ``http.threads`` threads each:
gthread workers keep connections alive and a long image download never
looks like a stuck worker (a sync worker would be killed after its timeout
on a slow link). The worker class is gthread's, made to survive slow
clients (:mod:`.worker`: heads read in the main loop, timeouts, a cap per
client address). Each worker opens its own bus socket after the fork.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from gunicorn.app.base import BaseApplication

from astralboot.common.bus.client import SyncBusClient
from astralboot.common.bus.security import client_curve
from astralboot.common.config import Config
from astralboot.common.errors import StartupError
from astralboot.common.privileges import drop
from astralboot.services.httpd.app import create_app
from astralboot.services.httpd.metrics import Metrics
from astralboot.services.httpd.storeclient import BusStore
from astralboot.services.httpd.worker import ClientLimits
from astralboot.services.httpd.worker import worker_class as httpd_worker

log = logging.getLogger(__name__)

KEEPALIVE = 15            # seconds an idle client connection stays open
BACKLOG = 2048
# Bounds on a request head. Boot clients send a few hundred bytes; these are
# gunicorn's defaults for one line and one field, fewer fields, and 32 KiB
# for the whole head (nginx's large_client_header_buffers, 4 x 8k).
LIMIT_REQUEST_LINE = 4094
LIMIT_REQUEST_FIELDS = 64
LIMIT_REQUEST_FIELD_SIZE = 8190
MAX_HEAD = 32 * 1024


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, app: Any, options: dict[str, Any]) -> None:
        self._app = app
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self._app


def listen(bind: str, port: int) -> socket.socket:
    """The listening socket, or StartupError saying why there is none."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        reason = {
            errno.EADDRINUSE: "address already in use",
            errno.EACCES: "permission denied (ports below 1024 need root or "
                          "CAP_NET_BIND_SERVICE)",
            errno.EADDRNOTAVAIL: "address not available on this host",
        }.get(exc.errno or 0, exc.strerror or str(exc))
        raise StartupError("httpd", f"cannot listen on {bind}:{port}: {reason}") from None
    sock.set_inheritable(True)
    return sock


SD_LISTEN_FDS_START = 3


def inherited_socket() -> socket.socket | None:
    """The listening socket systemd handed over (astralboot-httpd.socket), if any.

    With socket activation systemd binds port 80 itself, so httpd runs with
    no capability at all. The variables are removed so gunicorn, which also
    reads them, does not take the socket a second time.
    """
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if count < 1:
        return None
    if count > 1:
        log.warning("systemd passed %d sockets; serving on the first", count)
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if sock.type != socket.SOCK_STREAM:
        raise StartupError("httpd", "the socket systemd passed is not a stream socket")
    sock.set_inheritable(True)
    return sock


def client_limits(config: Config, admin: Listener | None = None) -> ClientLimits:
    return ClientLimits(header_timeout=config.http.header_timeout,
                        body_timeout=config.http.body_timeout,
                        per_client=config.http.per_client, max_head=MAX_HEAD,
                        admin=admin.address if admin else None,
                        tls=admin.tls if admin else None)


@dataclass(frozen=True)
class Listener:
    """The admin face's own listening socket, and its TLS if any."""

    sock: socket.socket
    address: tuple[str, int]
    tls: ssl.SSLContext | None


def admin_listener(config: Config) -> Listener | None:
    """``[admin] port``: a listener for the API and metrics only, TLS and mTLS if asked."""
    admin = config.admin
    if not admin.port:
        return None
    tls = None
    if admin.tls_cert is not None:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            tls.load_cert_chain(admin.tls_cert, admin.tls_key)
            if admin.client_ca is not None:
                tls.load_verify_locations(cafile=admin.client_ca)
                tls.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no certificate, no entry
        except (OSError, ssl.SSLError) as exc:
            raise StartupError("httpd", f"[admin] TLS: {exc}") from None
    sock = listen(admin.bind, admin.port)
    host, port = sock.getsockname()[:2]
    return Listener(sock, (host, port), tls)


def options(config: Config, fd: int, *, worker_class: str | None = None,
            workers: int | None = None, threads: int | None = None,
            admin: Listener | None = None, admin_fd: int | None = None) -> dict[str, Any]:
    """gunicorn's settings; ``worker_class`` (e.g. "gthread", "sync") is for bench/."""
    level = {"trace": "debug"}.get(config.log_level, config.log_level)
    return {
        "bind": [f"fd://{fd}"] + ([f"fd://{admin_fd}"] if admin_fd is not None else []),
        "workers": workers or config.http.workers,
        "threads": threads or config.http.threads,
        "worker_class": worker_class or httpd_worker(client_limits(config, admin)),
        "keepalive": KEEPALIVE,
        "limit_request_line": LIMIT_REQUEST_LINE,
        "limit_request_fields": LIMIT_REQUEST_FIELDS,
        "limit_request_field_size": LIMIT_REQUEST_FIELD_SIZE,
        "backlog": BACKLOG,
        "timeout": 60,
        "graceful_timeout": 10,
        "preload_app": True,
        # "sendfile" stays unset: gunicorn reads any value given to it, True
        # included, as --no-sendfile.
        "proc_name": "astralboot-httpd",
        "accesslog": None,
        "errorlog": "-",
        "loglevel": level,
        "worker_tmp_dir": "/dev/shm",
        # Whoever runs it now (root was given up before): gunicorn's own
        # default was read when it was imported, while still root.
        "user": os.geteuid(),
        "group": os.getegid(),
        "control_socket_disable": True,  # several httpd may share a host and a home folder
    }


def run(config: Config, **overrides: Any) -> int:
    sock = inherited_socket()
    if sock is not None:
        log.info("serving on the socket systemd passed (%s)", sock.getsockname())
    else:
        sock = listen(config.http.bind, config.http.port)
    master = os.getpid()
    admin = None
    try:
        admin = admin_listener(config)
        # Port 80 is bound: gunicorn, falcon and Jinja2 never run as root.
        drop(config, "httpd", [config.runtime_dir, config.store.cache])
        try:
            metrics = Metrics.prepare(config.runtime_dir / f"httpd-{config.http.port}.metrics")
        except OSError as exc:
            raise StartupError("httpd", f"cannot write {config.runtime_dir} (runtime_dir): "
                                        f"{exc.strerror}") from None
        bus = SyncBusClient(config.bus.endpoint, deadline=config.bus.deadline,
                            curve=client_curve(config, "httpd"))
        app = create_app(BusStore(bus, config.store.cache, config.store.cache_max), config,
                         metrics=metrics, admin_listener=admin.address if admin else None)
        log.info("httpd on %s:%d (public URL %s), %s workers x %s threads, store at %s",
                 config.http.bind, config.http.port, config.http.public_url,
                 overrides.get("workers") or config.http.workers,
                 overrides.get("threads") or config.http.threads, config.bus.endpoint)
        if admin is not None:
            log.info("admin face on %s:%d (%s)", *admin.address,
                     "mutual TLS" if config.admin.client_ca else
                     "TLS" if admin.tls else "plain HTTP")
        fd = os.dup(sock.fileno())  # gunicorn owns (and closes) this one
        os.set_inheritable(fd, True)
        admin_fd = None
        if admin is not None:
            admin_fd = os.dup(admin.sock.fileno())
            os.set_inheritable(admin_fd, True)
        try:
            _Gunicorn(app, options(config, fd, admin=admin, admin_fd=admin_fd,
                                   **overrides)).run()
        except SystemExit as exc:  # the arbiter (or a worker) exits when it has stopped
            return int(exc.code or 0) if not isinstance(exc.code, str) else 1
        return 0
    finally:
        if os.getpid() == master:
            sock.close()
            if admin is not None:
                admin.sock.close()
