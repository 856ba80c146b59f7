"""The typed configuration every service is handed.

Built once by :func:`astralboot.common.config.load` from config.toml and
refs.toml, then passed down; nothing reads TOML after start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

# Every service, in start order (the store first); ``Config.services`` are
# the ones this configuration runs (dnsd only with ``[dns] enabled``).
SERVICES = ("store", "dhcpd", "tftpd", "httpd", "dnsd")


@dataclass(frozen=True, slots=True)
class SubnetConfig:
    """One address pool: the served interface's own subnet, or a relayed one."""

    network: IPv4Network
    range_start: IPv4Address
    range_end: IPv4Address
    gateway: IPv4Address | None
    dns: tuple[IPv4Address, ...]
    lease_time: int
    relayed: bool

    @property
    def name(self) -> str:
        return str(self.network)

    def in_range(self, ip: IPv4Address) -> bool:
        return self.range_start <= ip <= self.range_end


@dataclass(frozen=True, slots=True)
class ReservationConfig:
    mac: str
    address: IPv4Address
    name: str | None = None
    os: str | None = None


@dataclass(frozen=True, slots=True)
class DhcpConfig:
    subnets: tuple[SubnetConfig, ...]  # the interface's own subnet first
    reservations: tuple[ReservationConfig, ...]
    lease_time: int
    offer_hold: int
    decline_quarantine: int
    offer_share: float  # of a pool's addresses that unbound offers may hold at once
    proxy: bool
    rogue_guard: bool
    rogue_listen: float
    port: int
    client_port: int

    @property
    def local(self) -> SubnetConfig:
        return self.subnets[0]


@dataclass(frozen=True, slots=True)
class TftpConfig:
    port: int
    single_port: bool
    max_sessions: int
    per_client: int
    timeout: float
    retries: int
    memory_cache: int  # files up to this many bytes are kept in memory
    memory_max: int = 256 << 20  # bytes of file content in memory: memory_cache + netascii copies


@dataclass(frozen=True, slots=True)
class HttpConfig:
    port: int
    bind: str
    workers: int
    threads: int
    public_url: str  # what boot scripts point at, e.g. http://192.0.2.1
    header_timeout: float = 10.0  # seconds to send a whole request head
    body_timeout: float = 30.0    # seconds a served client may send or take nothing
    per_client: int = 64          # open connections per client address, per worker process
    self_service: bool = True     # /choose/<os>/<mac>, /setclass/...: from that machine only


@dataclass(frozen=True, slots=True)
class MenuConfig:
    default: str
    timeout: int  # seconds before the default entry is taken; 0 waits forever


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """A listener of its own for the admin face (API, metrics), e.g. off the boot network."""

    port: int = 0  # 0: no such listener; the admin face is on the boot face's port
    bind: str = "127.0.0.1"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None  # set: clients must show a certificate it signed (mTLS)
    boot_face: bool = True  # the boot listener serves the admin face too (token-protected)


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """dnsd: authoritative for the boot network's names, a forwarder for the rest."""

    enabled: bool
    domain: str  # the zone it is authoritative for (default: the DHCP domain)
    server_name: str  # this host's own name in the zone, besides "astralboot"
    bind: IPv4Address  # the address it listens on, and hands to clients (option 6)
    port: int
    upstream: tuple[str, ...]  # "IP", "IP:PORT" or "[IPv6]:PORT"; empty: no forwarding
    # where the upstream list came from: "config", a resolv.conf path, or "" (none)
    upstream_from: str = field(compare=False)
    clients: tuple[IPv4Network, ...]  # answered besides the DHCP subnets (no open resolver)
    ttl: int  # of the authoritative records (leases change: keep it short)
    rrl: float  # authoritative responses per second per client /24 and answer; 0: off
    rrl_slip: int  # every Nth response over the limit goes out truncated (TC), 0: none
    cache: int  # forwarded answers kept (entries)
    forward_timeout: float  # seconds per upstream attempt
    forward_attempts: int
    log_queries: bool  # one log line per query answered (like dnsmasq's log-queries)


@dataclass(frozen=True, slots=True)
class UefiConfig:
    """What UEFI firmware is first handed when its machine's record names no loader."""

    loader: str = "ipxe"  # x64 (arch 7, 9): "ipxe", or "shim" for Secure Boot
    arm64_loader: str = "auto"  # arch 11: iPXE if the data folder has one (Debian ships none), else shim
    # a machine class's loader ([uefi.class]), between the machine's own and the default
    class_loaders: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    # the user services become once their ports are bound (when started as root)
    user: str = "astralboot"


@dataclass(frozen=True, slots=True)
class InstallConfig:
    # crypt(3) hash of the password installed systems give their user; None:
    # the account is locked (templates get "!"), never a password shipped with us
    password_hash: str | None = None


@dataclass(frozen=True, slots=True)
class IpfsConfig:
    enabled: bool
    api: str  # multiaddr, e.g. /ip4/127.0.0.1/tcp/5001
    timeout: float
    root: str | None  # the boot root CID from refs.toml


@dataclass(frozen=True, slots=True)
class StoreConfig:
    database: str  # SQLAlchemy URL; relative SQLite paths already resolved
    cache: Path
    cache_max: int  # bytes; 0: the cache is not bounded


@dataclass(frozen=True, slots=True)
class BusConfig:
    endpoint: str
    events: str
    deadline: float
    keys: Path = Path("keys")  # CURVE key pairs and admitted clients (tcp:// only)
    insecure: bool = False  # tcp:// without CURVE: anyone who reaches it may do anything

    @property
    def is_tcp(self) -> bool:
        return self.endpoint.startswith("tcp://") or self.events.startswith("tcp://")

    @property
    def is_local(self) -> bool:
        return self.endpoint.startswith("ipc://")


@dataclass(frozen=True, slots=True)
class Config:
    path: Path  # the config file, absolute
    refs_path: Path
    interface: str
    address: IPv4Address
    network: IPv4Network
    gateway: IPv4Address
    dns: tuple[IPv4Address, ...]  # what clients are told to resolve with (option 6)
    domain: str
    data: Path
    runtime_dir: Path
    log_level: str
    dhcp: DhcpConfig
    tftp: TftpConfig
    http: HttpConfig
    menu: MenuConfig
    ipfs: IpfsConfig
    store: StoreConfig
    bus: BusConfig
    dnsd: DnsConfig  # the [dns] table
    install: InstallConfig = InstallConfig()
    service: ServiceConfig = ServiceConfig()
    admin: AdminConfig = AdminConfig()
    uefi: UefiConfig = UefiConfig()
    derived: frozenset[str] = field(default_factory=frozenset)  # keys not set in the file
    warnings: tuple[str, ...] = ()

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def services(self) -> tuple[str, ...]:
        """The services this configuration runs, in start order."""
        return tuple(s for s in SERVICES if s != "dnsd" or self.dnsd.enabled)

    def control_endpoint(self, service: str) -> str:
        """Where a front end answers ``astralboot status`` on this host."""
        return f"ipc://{self.runtime_dir / (service + '.ctl')}"
