"""Every message on the bus, and the records they carry.

Requests go from a front end (dhcpd, tftpd, httpd, the CLI) to the store;
each has exactly one reply kind on success, or :class:`ErrorReply`. The
catalogue follows DESIGN.md: leases, machines, content, events, health.

Addresses travel as dotted strings, MACs as lower-case ``aa:bb:cc:dd:ee:ff``,
times as float seconds since the epoch.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any, Callable, Literal

from astralboot.common.bus.schema import Record, Reply, Request, message, record
from astralboot.common.errors import ErrorCode

# --- records -----------------------------------------------------------------

LeaseState = Literal["offered", "bound", "released", "declined", "expired"]


@record
class LeaseRecord(Record):
    ip: str
    mac: str
    subnet: str
    state: LeaseState
    expires: float
    lease_time: int
    client_id: bytes | None = None
    hostname: str | None = None


@record
class MachineRecord(Record):
    mac: str
    name: str
    os: str | None = None
    machine_class: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    boot_once: bool = False
    first_seen: float = 0.0
    last_seen: float = 0.0
    ip: str | None = None
    loader: str | None = None  # "ipxe" or "shim" (Secure Boot); None: the configured default


@record
class Reservation(Record):
    mac: str
    ip: str
    name: str | None = None
    os: str | None = None


@record
class ContentEntry(Record):
    path: str
    is_dir: bool
    size: int = 0
    digest: str | None = None  # hex SHA-256 of a file's bytes; None for folders


@record
class BootEvent(Record):
    time: float
    # None only in a front end's report that knows just the client's address
    # (TFTP, image downloads): the store, which owns the leases, fills it in.
    # Every event the store keeps or publishes has a MAC.
    mac: str | None
    service: str
    stage: str
    ip: str | None = None
    detail: str = ""
    id: int = 0  # assigned by the store


@record
class ImportedLease(Record):
    """One entry of the original server's machines.json."""

    ip: str
    mac: str | None = None
    active: bool = False
    reserved: bool = False
    os: str | None = None
    name: str | None = None
    machine_class: str | None = None
    created: float | None = None


TokenScope = Literal["read", "write"]


@record
class TokenInfo(Record):
    """An admin API token as the store keeps it: never the secret, only its name and scope."""

    name: str
    scope: TokenScope
    created: float = 0.0


# --- replies -----------------------------------------------------------------


@message("error")
class ErrorReply(Reply):
    code: str
    detail: str = ""

    def __post_init__(self) -> None:
        ErrorCode(self.code)  # a closed set; raises ValueError otherwise

    @property
    def error_code(self) -> ErrorCode:
        return ErrorCode(self.code)


@message("ok")
class Done(Reply):
    """Success with nothing to say."""


@message("ok.lease")
class LeaseReply(Reply):
    lease: LeaseRecord
    machine: MachineRecord | None = None


@message("ok.lease.grant")
class LeaseGrant(Reply):
    """The answer to LeaseOffer and LeaseCommit: what a DHCP reply is built from.

    Flat and small on purpose: a busy DHCP server gets thousands a second.
    ``name`` and ``os`` are the machine's (its host name option and its boot
    script); the whole lease and machine records come from LeaseLookup.
    """

    ip: str
    state: LeaseState
    lease_time: int
    expires: float
    name: str | None = None
    os: str | None = None
    mac: str = ""  # the client's, so the caller can check the grant is for its request
    loader: str | None = None  # the machine's; None: the configured default
    machine_class: str | None = None  # the machine's (a class may name a loader)


@message("ok.leases")
class LeaseListReply(Reply):
    leases: tuple[LeaseRecord, ...] = ()


@message("ok.machine")
class MachineReply(Reply):
    machine: MachineRecord


@message("ok.machines")
class MachineListReply(Reply):
    machines: tuple[MachineRecord, ...] = ()


@message("ok.reservations")
class ReservationListReply(Reply):
    reservations: tuple[Reservation, ...] = ()


@message("ok.import")
class ImportReply(Reply):
    leases: int = 0
    machines: int = 0
    reserved: int = 0
    skipped: int = 0


@message("ok.token")
class TokenReply(Reply):
    token: TokenInfo


@message("ok.tokens")
class TokenListReply(Reply):
    tokens: tuple[TokenInfo, ...] = ()


@message("ok.content.entry")
class ContentStatReply(Reply):
    entry: ContentEntry


@message("ok.content.list")
class ContentListReply(Reply):
    path: str
    entries: tuple[ContentEntry, ...] = ()


@message("ok.content.data")
class ContentDataReply(Reply):
    digest: str
    offset: int
    size: int  # size of the whole file
    data: bytes = b""


@message("ok.events")
class EventListReply(Reply):
    events: tuple[BootEvent, ...] = ()


@message("ok.subscribed")
class SubscribeReply(Reply):
    topics: tuple[str, ...] = ()
    renew: float = 10.0  # seconds until the subscription should be sent again


@message("ok.health")
class HealthReply(Reply):
    service: str
    version: str
    pid: int
    host: str
    started: float
    status: Literal["ok", "degraded"] = "ok"
    details: dict[str, str | int | float | bool] = field(default_factory=dict)


# --- lease requests ----------------------------------------------------------

CommitMode = Literal["select", "reboot", "renew", "rebind"]


@message("lease.offer")
class LeaseOffer(Request):
    """Pick an address for a DISCOVER and hold it for a short while → LeaseGrant."""

    mac: str
    subnet: str
    client_id: bytes | None = None
    requested_ip: str | None = None
    hostname: str | None = None
    # True: the store also records and publishes the ``dhcp.offer`` boot event
    # (service dhcpd) with ``detail``, so the caller sends no EventReport for it.
    report: bool = False
    detail: str = ""


@message("lease.commit")
class LeaseCommit(Request):
    """Bind an address for a REQUEST → LeaseGrant, answered only once it is on disk.

    ``conflict`` means NAK; ``not_found`` (INIT-REBOOT of an unknown client)
    means stay silent.
    """

    mac: str
    subnet: str
    ip: str
    mode: CommitMode
    client_id: bytes | None = None
    hostname: str | None = None
    # True: once the lease is durable the store also records and publishes the
    # ``dhcp.ack`` boot event (service dhcpd) with ``detail``: one message per
    # ACK instead of two.
    report: bool = False
    detail: str = ""


@message("lease.release")
class LeaseRelease(Request):
    mac: str
    ip: str
    client_id: bytes | None = None
    report: bool = False  # True: the store records ``dhcp.release`` itself
    detail: str = ""


@message("lease.decline")
class LeaseDecline(Request):
    mac: str
    ip: str
    client_id: bytes | None = None
    report: bool = False  # True: the store records ``dhcp.decline`` itself
    detail: str = ""


@message("lease.lookup")
class LeaseLookup(Request):
    """The current lease of a MAC or of an address (exactly one is given)."""

    mac: str | None = None
    ip: str | None = None

    def __post_init__(self) -> None:
        if (self.mac is None) == (self.ip is None):
            raise ValueError("give exactly one of mac and ip")


@message("lease.list")
class LeaseList(Request):
    subnet: str | None = None
    state: LeaseState | None = None
    limit: int = 10000


@message("lease.import")
class LeaseImport(Request):
    entries: tuple[ImportedLease, ...]


@message("reservation.set")
class ReservationSet(Request):
    reservation: Reservation


@message("reservation.delete")
class ReservationDelete(Request):
    mac: str


@message("reservation.list")
class ReservationList(Request):
    pass


# --- machine requests --------------------------------------------------------

MACHINE_FIELDS = ("name", "os", "machine_class", "labels", "boot_once", "loader")
# What a UEFI machine is first handed: iPXE, or Debian's signed shim + GRUB (Secure Boot).
LOADERS = ("ipxe", "shim")


@message("machine.get")
class MachineGet(Request):
    mac: str


@message("machine.set")
class MachineSet(Request):
    """Change a machine; None leaves a field as it is, ``clear`` empties it.

    The machine is created (named ``nodeN``) if the store has not seen it.
    """

    mac: str
    name: str | None = None
    os: str | None = None
    machine_class: str | None = None
    labels: dict[str, str] | None = None
    boot_once: bool | None = None
    loader: str | None = None
    clear: tuple[str, ...] = ()
    actor: str | None = None  # who asked (an admin token's name, the machine's menu): audit

    def __post_init__(self) -> None:
        for name in self.clear:
            if name not in MACHINE_FIELDS:
                raise ValueError(f"cannot clear {name!r}")


@message("machine.list")
class MachineList(Request):
    os: str | None = None


# --- admin tokens ------------------------------------------------------------
#
# The secret itself never travels: whoever makes a token (the CLI, init)
# draws it and sends its SHA-256; httpd sends the SHA-256 of the bearer it
# was shown. See common/tokens.py.


@message("token.create")
class TokenCreate(Request):
    """Record a new token → TokenReply; ``conflict`` if the name is taken."""

    name: str
    scope: TokenScope
    digest: str  # hex SHA-256 of the secret


@message("token.revoke")
class TokenRevoke(Request):
    name: str


@message("token.list")
class TokenList(Request):
    pass


@message("token.check")
class TokenCheck(Request):
    """Which token has this digest → TokenReply, or ``not_found``."""

    digest: str


# --- content requests --------------------------------------------------------


@message("content.stat")
class ContentStat(Request):
    """Resolve a path under the content root to its digest and size.

    When the reply comes, a file's bytes are in the store's cache.
    """

    path: str


@message("content.list")
class ContentList(Request):
    path: str


@message("content.read")
class ContentRead(Request):
    digest: str
    offset: int = 0
    length: int = 1 << 20


# --- events and health -------------------------------------------------------


@message("event.report")
class EventReport(Request):
    """Fire-and-forget: a front end tells the store a boot stage happened."""

    expects_reply = False
    event: BootEvent


@message("event.list")
class EventList(Request):
    mac: str | None = None
    after_id: int = 0
    limit: int = 1000


@message("event.subscribe")
class EventSubscribe(Request):
    """Sent on the events socket: stream the events of MACs starting with ``topics``.

    ``""`` is every machine; no topics ends the subscription. A subscription
    lasts a few renew periods (the reply says how long one is), so the
    subscriber sends it again, which also re-subscribes at a restarted store.
    """

    topics: tuple[str, ...] = ()


@message("health")
class Health(Request):
    pass


# --- which reply answers which request ----------------------------------------
#
# The request id ties a reply to its request; this is the second check. A
# reply of the wrong kind, or about another machine, address or file, is
# never taken as the answer (a client counts and drops it), so a crossing of
# two requests can fail a request but never hand one machine another's record.


def _mac_key(text: str | None) -> str:
    return "".join(c for c in (text or "").lower() if c in "0123456789abcdef")


def _path_key(text: str) -> str:
    return "/".join(p for p in text.split("/") if p not in ("", "."))


def _same_mac(a: str | None, b: str | None) -> bool:
    return _mac_key(a) == _mac_key(b)


def _lease_matches(req: LeaseLookup, reply: LeaseReply) -> bool:
    if req.ip is not None:
        return reply.lease.ip == req.ip
    return _same_mac(reply.lease.mac, req.mac)


_ANSWERS: dict[type, tuple[type, Callable[[Any, Any], bool] | None]] = {
    LeaseOffer: (LeaseGrant, lambda q, r: not r.mac or _same_mac(r.mac, q.mac)),
    LeaseCommit: (LeaseGrant, lambda q, r: r.ip == q.ip and (not r.mac or _same_mac(r.mac, q.mac))),
    LeaseRelease: (Done, None),
    LeaseDecline: (Done, None),
    LeaseLookup: (LeaseReply, _lease_matches),
    LeaseList: (LeaseListReply, None),
    LeaseImport: (ImportReply, None),
    ReservationSet: (Done, None),
    ReservationDelete: (Done, None),
    ReservationList: (ReservationListReply, None),
    MachineGet: (MachineReply, lambda q, r: _same_mac(r.machine.mac, q.mac)),
    MachineSet: (MachineReply, lambda q, r: _same_mac(r.machine.mac, q.mac)),
    MachineList: (MachineListReply, None),
    ContentStat: (ContentStatReply, lambda q, r: _path_key(r.entry.path) == _path_key(q.path)),
    ContentList: (ContentListReply, lambda q, r: _path_key(r.path) == _path_key(q.path)),
    ContentRead: (ContentDataReply, lambda q, r: r.digest == q.digest and r.offset == q.offset),
    EventList: (EventListReply, None),
    TokenCreate: (TokenReply, lambda q, r: r.token.name == q.name),
    TokenRevoke: (Done, None),
    TokenList: (TokenListReply, None),
    TokenCheck: (TokenReply, None),
    EventSubscribe: (SubscribeReply, lambda q, r: r.topics == q.topics),
    Health: (HealthReply, None),
}


def answers(request: Request, reply: Reply) -> bool:
    """Whether ``reply`` can be the answer to ``request`` (an error always can)."""
    if type(reply) is ErrorReply:
        return True
    expected = _ANSWERS.get(type(request))
    if expected is None:
        return True  # a kind this table does not know (a newer peer's): id only
    kind, same = expected
    return type(reply) is kind and (same is None or same(request, reply))
