"""CURVE on a ``tcp://`` bus: who may connect, and what each may ask.

On ``ipc://`` the socket file's permissions are the door. On ``tcp://`` the
store is a CURVE server: every connection is encrypted, and a ZAP handler
admits only the client public keys kept under ``[bus] keys``/``clients/``,
each named and given a role. The store then takes from each peer only the
requests its role needs: dhcpd leases, tftpd content, httpd content and
machines, dnsd the lease and machine lists it names hosts from, the CLI
(``admin``) everything.

The key folder, beside config.toml unless ``[bus] keys`` says otherwise::

    keys/store.key        the store's pair (secret: on the store's host only)
    keys/store.pub        the store's public key (every client host has a copy)
    keys/ROLE.key         this host's client pair for a role (dhcpd, tftpd,
                          httpd, dnsd, admin), used by that service or the CLI
    keys/clients/NAME.pub the clients the store admits, with their roles

``astralboot keys setup`` makes the store's pair and one admitted pair per
local role; ``astralboot keys create NAME --role httpd`` makes one for
another host (copy ``keys/NAME.key`` there as ``keys/httpd.key``, with
``keys/store.pub``); ``keys revoke NAME`` removes its admission.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.utils import z85

from astralboot.common.config.model import Config
from astralboot.common.errors import ConfigError, StartupError
from astralboot.common.logs import SenderLimit

log = logging.getLogger(__name__)

ROLES = ("store", "dhcpd", "tftpd", "httpd", "dnsd", "admin")
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"astralboot"
CLIENTS = "clients"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_Z85_KEY = re.compile(r"[0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")

_LEASES = {"lease.offer", "lease.commit", "lease.release", "lease.decline", "lease.lookup"}
_CONTENT = {"content.stat", "content.list", "content.read"}
# The requests each role may send; admin may send any. Health and event
# reports are everyone's.
ALLOWED: dict[str, frozenset[str]] = {
    "dhcpd": frozenset(_LEASES | {"machine.get", "content.stat"}),
    "tftpd": frozenset(_CONTENT | {"lease.lookup"}),
    "httpd": frozenset(_CONTENT | {"lease.lookup", "lease.list", "machine.get", "machine.set",
                                   "machine.list", "event.list", "token.check"}),
    "dnsd": frozenset({"lease.lookup", "lease.list", "machine.list"}),
    "store": frozenset(),
}
EVERYONE = frozenset({"health", "event.report", "event.subscribe"})


def may_send(role: str, kind: str) -> bool:
    if role == "admin" or kind in EVERYONE:
        return True
    return kind in ALLOWED.get(role, frozenset())


@dataclass(frozen=True, slots=True)
class KeyPair:
    name: str
    role: str
    public: str  # Z85, 40 characters
    secret: str | None = None

    def text(self, with_secret: bool) -> str:
        lines = [f"# AstralBoot bus key: {self.name} ({self.role})",
                 f'name = "{self.name}"', f'role = "{self.role}"', f'public = "{self.public}"']
        if with_secret and self.secret:
            lines.append(f'secret = "{self.secret}"')
        return "\n".join(lines) + "\n"


def generate(name: str, role: str) -> KeyPair:
    if not _NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a key name (letters, digits, . _ -, at most 63)")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    public, secret = zmq.curve_keypair()
    return KeyPair(name, role, public.decode(), secret.decode())


def write(path: Path, pair: KeyPair, with_secret: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if with_secret else 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(pair.text(with_secret))
    os.replace(tmp, path)


def read(path: Path, need_secret: bool = False) -> KeyPair:
    """A key file; ConfigError naming the file and what is wrong with it."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(path, "bus.keys", "no such key file; `astralboot keys setup` makes "
                                            "the store's and this host's keys") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(path, "bus.keys", f"cannot read: {exc}") from None
    name, role = raw.get("name"), raw.get("role")
    public, secret = raw.get("public"), raw.get("secret")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(path, "name", "missing or not a key name")
    if role not in ROLES:
        raise ConfigError(path, "role", f"must be one of {', '.join(ROLES)}")
    if not isinstance(public, str) or not _Z85_KEY.fullmatch(public):
        raise ConfigError(path, "public", "not a 40-character Z85 CURVE key")
    if need_secret and (not isinstance(secret, str) or not _Z85_KEY.fullmatch(secret)):
        raise ConfigError(path, "secret", "missing: this file is a public key only")
    return KeyPair(name, role, public, secret if isinstance(secret, str) else None)


def admitted(folder: Path) -> dict[bytes, KeyPair]:
    """The clients the store lets in: public key (32 raw bytes) -> their key."""
    out: dict[bytes, KeyPair] = {}
    clients = folder / CLIENTS
    if not clients.is_dir():
        return out
    for path in sorted(clients.glob("*.pub")):
        try:
            pair = read(path)
        except ConfigError as exc:
            log.warning("ignoring %s", exc)
            continue
        out[z85.decode(pair.public)] = pair
    return out


# -- who uses which keys ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ClientCurve:
    """What a client socket needs: its own pair and the store's public key."""

    public: bytes
    secret: bytes
    server: bytes

    def apply(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server)


def secured(config: Config) -> bool:
    """Whether this configuration's bus runs CURVE (tcp://, not insecure)."""
    return config.bus.is_tcp and not config.bus.insecure


def client_curve(config: Config, role: str) -> ClientCurve | None:
    """The CURVE settings for a client of ``role``, or None on an ipc/insecure bus.

    Raises StartupError (naming the file) when a tcp:// bus has no keys.
    """
    if not secured(config):
        return None
    folder = config.bus.keys
    try:
        mine = read(folder / f"{role}.key", need_secret=True)
        store = read(folder / "store.pub")
    except ConfigError as exc:
        raise StartupError(role, f"{config.bus.endpoint} is tcp:// and needs CURVE keys: {exc} "
                                 "(or set [bus] insecure = true)") from None
    assert mine.secret is not None
    return ClientCurve(mine.public.encode(), mine.secret.encode(), store.public.encode())


def local_curve(config: Config) -> ClientCurve | None:
    """Any client key this host has (admin first): for health, which every role may ask."""
    if not secured(config):
        return None
    for role in ("admin", "httpd", "tftpd", "dhcpd", "dnsd"):
        if (config.bus.keys / f"{role}.key").exists():
            return client_curve(config, role)
    return client_curve(config, "admin")  # raises, naming the file that is missing


def server_secret(config: Config) -> bytes | None:
    """The store's CURVE secret key, or None on an ipc/insecure bus."""
    if not secured(config):
        return None
    try:
        pair = read(config.bus.keys / "store.key", need_secret=True)
    except ConfigError as exc:
        raise StartupError("store", f"{config.bus.endpoint} is tcp:// and needs CURVE keys: "
                                    f"{exc} (or set [bus] insecure = true)") from None
    assert pair.secret is not None
    return pair.secret.encode()


def make_server(sock: zmq.Socket, secret: bytes) -> None:
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)


class ZapHandler:
    """ZeroMQ's authentication hook (RFC 27) for the store's context, on a thread.

    Admits a CURVE client only if its public key is in ``keys/clients/``
    (read again when the folder changes, so ``keys revoke`` takes effect on
    the next connection) and names it ``NAME/ROLE`` for the store, which
    reads that as the message's User-Id.
    """

    def __init__(self, context: zmq.Context, folder: Path) -> None:
        self.folder = folder
        self.refused = 0
        self.admitted = 0
        self._ctx = context
        self._sock: zmq.Socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._keys: dict[bytes, KeyPair] = {}
        self._seen: tuple[float, int] | None = None
        self._warnings = SenderLimit()

    def start(self) -> None:
        sock = self._ctx.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(ZAP_ENDPOINT)
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="store-zap", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _clients(self) -> dict[bytes, KeyPair]:
        clients = self.folder / CLIENTS
        try:
            st = clients.stat()
            seen = (st.st_mtime, len(os.listdir(clients)))
        except OSError:
            seen = None
        if seen != self._seen or seen is None:
            self._keys = admitted(self.folder)
            self._seen = seen
        return self._keys

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._stop.is_set():
            if not sock.poll(200):
                continue
            frames = sock.recv_multipart()
            version, request_id = frames[0], frames[1] if len(frames) > 1 else b""
            status, text, user = b"400", b"not admitted", b""
            if len(frames) >= 7 and frames[5] == b"CURVE" and frames[2] == ZAP_DOMAIN:
                try:
                    pair = self._clients().get(frames[6])
                except Exception:  # a bug must refuse, never leave ZeroMQ without an answer
                    log.exception("reading the admitted bus keys")
                    pair = None
                if pair is not None:
                    status, text, user = b"200", b"OK", f"{pair.name}/{pair.role}".encode()
            if status == b"200":
                self.admitted += 1
            else:
                self.refused += 1
                where = frames[3].decode(errors="replace") if len(frames) > 3 else "?"
                self._warnings.log(log, logging.WARNING, where, time.monotonic(),
                                   "bus connection from %s refused: unknown CURVE key", where)
            sock.send_multipart([version, request_id, status, text, user, b""])
        sock.close(0)


def role_of(user_id: str) -> str:
    """``NAME/ROLE`` (the ZAP handler's User-Id) → ROLE."""
    return user_id.rpartition("/")[2]
