"""Reading config.toml and refs.toml into a :class:`Config`.

Every problem is reported as a :class:`ConfigError` naming the file, the
key (dotted, e.g. ``dhcp.range``) and what is wrong; all problems found are
reported together. Unknown keys are errors too, with a suggestion, so a typo
never silently falls back to a default. Relative paths resolve against the
folder holding config.toml.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
import tomllib
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Callable, TypeVar

from astralboot.common import netif
from astralboot.common.errors import ConfigError, ConfigErrors
from astralboot.common.names import MACHINE_NAME, WORD
from astralboot.common.config.model import (AdminConfig, BusConfig, Config, DhcpConfig, DnsConfig, HttpConfig, InstallConfig, UefiConfig,
                    IpfsConfig, MenuConfig, ReservationConfig, ServiceConfig, StoreConfig,
                    SubnetConfig, TftpConfig)

T = TypeVar("T")
_UNSET: Any = object()

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")

# Keys of the original Go server's config.toml, read so an old file still works.
LEGACY_KEYS = {
    "BaseIP": "address",
    "Gateway": "gateway",
    "DNSServer": "dhcp.dns",
    "Domain": "domain",
    "Data": "data",
    "IPFS": "ipfs.enabled",
    "UpstreamDNS": "dns.upstream",
}
# Ignored with a warning that says why: what the original computed at start
# (Subnet, OSList), kept elsewhere now (ref and Refs are refs.toml's; DBname's
# machines.json is imported), or served by nothing in this version (Spawn).
LEGACY_IGNORED = {
    "Spawn": "the spawn API is retired",
    "ref": "boot files' root CID is read from refs.toml",
    "Refs": "boot files' root CID is read from refs.toml",
    "Subnet": "the netmask comes from [network]",
    "OSList": "OS folders are read from the data folder",
    "DBname": "import it with `astralboot leases import`",
}
# Seconds the rogue-server guard listens. Servers that ping an address before
# offering it answer a new client late (dnsmasq after about 3 s, ISC dhcpd
# after 1 s), so the guard waits longer than either.
ROGUE_LISTEN = 5.0
# Where dnsd's upstream servers come from when [dns] upstream is not set.
RESOLV_CONF = Path("/etc/resolv.conf")


class Table:
    """One TOML table being read: tracks used keys, collects errors."""

    def __init__(self, file: Path, data: dict[str, Any], prefix: str,
                 errors: list[ConfigError], present: set[str]) -> None:
        self.file = file
        self.data = data
        self.prefix = prefix
        self.errors = errors
        self.present = present  # dotted keys the file actually set
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def error(self, name: str, problem: str) -> None:
        self.errors.append(ConfigError(self.file, self.key(name), problem))

    def has(self, name: str) -> bool:
        return name in self.data

    def get(self, name: str, parse: Callable[[Any], T], default: T = _UNSET) -> T:
        self.used.add(name)
        if name not in self.data:
            if default is _UNSET:
                self.error(name, "missing (required)")
                return None  # type: ignore[return-value]
            return default
        self.present.add(self.key(name))
        try:
            return parse(self.data[name])
        except (ValueError, TypeError) as exc:
            self.error(name, str(exc))
            return default if default is not _UNSET else None  # type: ignore[return-value]

    def table(self, name: str) -> "Table":
        self.used.add(name)
        raw = self.data.get(name, {})
        if not isinstance(raw, dict):
            self.error(name, f"must be a table ([{self.key(name)}]), not {_kind(raw)}")
            raw = {}
        return Table(self.file, raw, f"{self.key(name)}.", self.errors, self.present)

    def tables(self, name: str) -> list["Table"]:
        self.used.add(name)
        raw = self.data.get(name, [])
        if isinstance(raw, dict):
            raw = [raw]
        if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
            self.error(name, f"must be an array of tables ([[{self.key(name)}]])")
            return []
        return [Table(self.file, x, f"{self.key(name)}[{i}].", self.errors, self.present)
                for i, x in enumerate(raw)]

    def finish(self) -> None:
        for name in self.data:
            if name in self.used:
                continue
            close = difflib.get_close_matches(name, list(self.used), n=1)
            hint = f" (did you mean {self.key(close[0])}?)" if close else ""
            self.error(name, f"unknown setting{hint}")


def _kind(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(v), type(v).__name__)


# --- value parsers (raise ValueError with a message for the operator) --------

def p_str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"must be a string, not {_kind(v)}")
    return v


def p_bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"must be true or false, not {_kind(v)}")
    return v


def p_int_between(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"must be a whole number, not {_kind(v)}")
        if not lo <= v <= hi:
            raise ValueError(f"{v} is out of range ({lo} to {hi})")
        return v
    return parse


p_port = p_int_between(1, 65535)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def p_seconds(lo: float, hi: float) -> Callable[[Any], float]:
    """A duration: a number of seconds or a string like "90s", "12h", "7d"."""
    def parse(v: Any) -> float:
        if isinstance(v, bool):
            raise ValueError("must be a duration, not a boolean")
        if isinstance(v, (int, float)):
            secs = float(v)
        elif isinstance(v, str) and (m := _DURATION.match(v)):
            secs = float(m.group(1)) * _UNIT[m.group(2)]
        else:
            raise ValueError(f"must be a duration like 30, \"90s\", \"12h\" or \"7d\", not {v!r}")
        if not lo <= secs <= hi:
            raise ValueError(f"{secs:g}s is out of range ({lo:g}s to {hi:g}s)")
        return secs
    return parse


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_SIZE_UNIT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def p_size(v: Any) -> int:
    """A size in bytes: a whole number or a string like "512M", "20G", "1.5T"."""
    if isinstance(v, bool):
        raise ValueError("must be a size, not a boolean")
    if isinstance(v, int):
        size = v
    elif isinstance(v, str) and (m := _SIZE.match(v)):
        size = int(float(m.group(1)) * _SIZE_UNIT[m.group(2).upper()])
    else:
        raise ValueError(f"must be a size like 0, \"512M\" or \"20G\", not {v!r}")
    if size < 0:
        raise ValueError(f"{size} is negative")
    return size


def p_ip(v: Any) -> IPv4Address:
    try:
        return IPv4Address(p_str(v))
    except ipaddress.AddressValueError:
        raise ValueError(f"{v!r} is not an IPv4 address") from None


def p_ips(v: Any) -> tuple[IPv4Address, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v:
        raise ValueError("must be an address or a non-empty array of addresses")
    return tuple(p_ip(x) for x in v)


def p_ips_or_none(v: Any) -> tuple[IPv4Address, ...]:
    """Like :func:`p_ips`, but ``[]`` is allowed: none at all."""
    if isinstance(v, list) and not v:
        return ()
    return p_ips(v)


def p_upstream(v: Any) -> str:
    """A DNS server to forward to: ``IP``, ``IP:PORT``, ``IPv6`` or ``[IPv6]:PORT``."""
    text = p_str(v).strip()
    host, port = text, ""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not [IPv6]:PORT")
        port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r} is not an address like 192.0.2.53, 192.0.2.53:5353 or "
                         "[2001:db8::53]:53 (a name would need a resolver to find it)") from None
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{text!r}: {port!r} is not a port")
    if address.is_unspecified:
        raise ValueError(f"{text!r} is not an address a query can be sent to")
    if not port:
        return str(address)
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def p_upstreams(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v] if v.strip() else []
    if not isinstance(v, list):
        raise ValueError("must be an address or an array of addresses ([] for none)")
    return tuple(dict.fromkeys(p_upstream(x) for x in v))


def resolv_conf_servers(path: Path) -> tuple[str, ...]:
    """The ``nameserver`` lines of a resolv.conf (the host's own resolvers)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()
    found = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                found.append(p_upstream(words[1].split("%", 1)[0]))
            except ValueError:
                continue
    return tuple(dict.fromkeys(found))


def p_networks(v: Any) -> tuple[IPv4Network, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list):
        raise ValueError("must be a network or an array of networks")
    return tuple(p_network(x) for x in v)


def p_network(v: Any) -> IPv4Network:
    try:
        return IPv4Network(p_str(v), strict=False)
    except ValueError:
        raise ValueError(f"{v!r} is not a network like 192.0.2.0/24") from None


def p_range(v: Any) -> tuple[IPv4Address, IPv4Address]:
    text = p_str(v)
    parts = [p.strip() for p in text.split("-")]
    if len(parts) != 2:
        raise ValueError(f"{text!r} is not a range like 192.0.2.100-192.0.2.200")
    start, end = p_ip(parts[0]), p_ip(parts[1])
    if end < start:
        raise ValueError(f"range ends ({end}) before it starts ({start})")
    return start, end


_MAC = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")


def normalise_mac(v: str) -> str:
    """``52-54-00-AB-cd-01`` or ``525400abcd01`` → ``52:54:00:ab:cd:01``."""
    text = v.strip().lower()
    if not _MAC.match(text):
        raise ValueError(f"{v!r} is not a MAC address like 52:54:00:12:34:56")
    digits = text.replace(":", "").replace("-", "")
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


def p_mac(v: Any) -> str:
    return normalise_mac(p_str(v))


def p_choice(*choices: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        text = p_str(v).lower()
        if text not in choices:
            raise ValueError(f"{v!r} is not one of {', '.join(choices)}")
        return text
    return parse


_MULTIADDR = re.compile(r"^/(ip4|ip6|dns|dns4|dns6)/[^/]+/tcp/\d{1,5}(/https?)?$")


def p_multiaddr(v: Any) -> str:
    text = p_str(v)
    if not _MULTIADDR.match(text):
        raise ValueError(f"{text!r} is not an API multiaddr like /ip4/127.0.0.1/tcp/5001")
    return text


def p_name(v: Any) -> str:
    """A DNS-safe label or dotted name (domain, machine names)."""
    text = p_str(v)
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*", text):
        raise ValueError(f"{text!r} is not a valid DNS name")
    return text


def p_machine_name(v: Any) -> str:
    """A machine's name: one DNS label (the host name it is given)."""
    text = p_str(v)
    if not MACHINE_NAME.fullmatch(text):
        raise ValueError(f"{text!r} is not a machine name (one DNS label: letters, digits, "
                         "hyphens, at most 63)")
    return text


def p_fraction(lo: float, hi: float) -> Callable[[Any], float]:
    def parse(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise ValueError(f"expected a number from {lo:g} to {hi:g}, got {v!r}")
        return float(v)
    return parse


def p_os_name(v: Any) -> str:
    text = p_str(v)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", text):
        raise ValueError(f"{text!r} is not an OS folder name")
    return text


def resolve_path(base: Path, v: Any) -> Path:
    text = os.path.expanduser(p_str(v))
    path = Path(text)
    return path if path.is_absolute() else (base / path)


def resolve_endpoint(base: Path, v: Any) -> str:
    text = p_str(v)
    if text.startswith("ipc://"):
        path = resolve_path(base, text[len("ipc://"):])
        if len(str(path)) > 100:
            raise ValueError(f"socket path {path} is too long for a UNIX socket "
                             "(over 100 characters); set a shorter runtime_dir")
        return f"ipc://{path}"
    m = re.fullmatch(r"tcp://([^:/]+|\[[0-9a-fA-F:]+\]):(\d{1,5})", text)
    if m and 0 < int(m.group(2)) < 65536:
        return text
    raise ValueError(f"{text!r} is not ipc://PATH or tcp://HOST:PORT")


def resolve_database(base: Path, v: Any) -> str:
    text = p_str(v)
    m = re.fullmatch(r"(sqlite(?:\+\w+)?):///(.*)", text)
    if m:
        path = m.group(2)
        if not path or path == ":memory:":
            raise ValueError("an in-memory SQLite database would lose every lease at exit")
        return f"{m.group(1)}:///{resolve_path(base, path)}"
    if re.match(r"postgresql(\+\w+)?://", text):
        if text.startswith("postgresql://"):
            text = "postgresql+psycopg://" + text[len("postgresql://"):]
        return text
    raise ValueError(f"{text!r} is not a sqlite:///PATH or postgresql://... URL")


def next_port_endpoint(endpoint: str) -> str:
    """tcp://h:p → tcp://h:(p+1); ipc://dir/bus.sock → ipc://dir/events.sock."""
    if endpoint.startswith("ipc://"):
        return f"ipc://{Path(endpoint[6:]).with_name('events.sock')}"
    host, port = endpoint.rsplit(":", 1)
    return f"{host}:{int(port) + 1}"


def default_range(network: IPv4Network, avoid: set[IPv4Address]) -> tuple[IPv4Address, IPv4Address]:
    """The upper half of the subnet, without the network and broadcast addresses."""
    if network.num_addresses < 4:
        raise ValueError(f"{network} is too small to hand out addresses")
    start = network.network_address + network.num_addresses // 2
    end = network.broadcast_address - 1
    while start in avoid and start < end:
        start += 1
    return start, end


# --- the loader --------------------------------------------------------------

def load(path: str | os.PathLike[str], *, require_interface: bool = False) -> Config:
    """Read and check ``path`` (and refs.toml beside it)."""
    file = Path(path).absolute()
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(file, "(file)", "not found; create it with `astralboot init`") from None
    except OSError as exc:
        hint = ""
        if isinstance(exc, PermissionError):
            hint = (f" (running as uid {os.geteuid()}: the file must be readable by the "
                    "service user; `astralboot init --system` writes it 0640, group astralboot)")
        raise ConfigError(file, "(file)", f"cannot read: {exc.strerror}{hint}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "(syntax)", str(exc)) from None
    except UnicodeDecodeError:
        raise ConfigError(file, "(file)", "is not UTF-8 text") from None
    return from_dict(raw, file, require_interface=require_interface)


def from_dict(raw: dict[str, Any], file: Path, *, require_interface: bool = False) -> Config:
    base = file.parent
    errors: list[ConfigError] = []
    present: set[str] = set()
    warnings: list[str] = []
    raw = dict(raw)
    _translate_legacy(raw, warnings, file)
    top = Table(file, raw, "", errors, present)

    interface = top.get("interface", p_str, "")
    iface_addr = netif.ipv4_of(interface) if interface else None
    if interface and require_interface and not netif.exists(interface):
        top.error("interface", f"no interface {interface!r} on this host")

    address = top.get("address", p_ip, None)
    network = top.get("network", p_network, None)
    if address is None:
        if iface_addr is not None:
            address = iface_addr.ip
        else:
            why = (f"interface {interface!r} has no IPv4 address" if interface and netif.exists(interface)
                   else f"no interface {interface!r} on this host" if interface
                   else "no interface is set")
            top.error("address", f"not set, and it cannot be read from the interface: {why}")
            address = IPv4Address("192.0.2.1")
    if network is None:
        if iface_addr is not None and iface_addr.ip == address:
            network = iface_addr.network
        else:
            network = IPv4Network(f"{address}/24", strict=False)
            if "address" in present:
                warnings.append(f"{file}: network: not set; assuming {network}")
    elif address not in network:
        top.error("network", f"{network} does not contain the server address {address}")

    gateway = top.get("gateway", p_ip, address)
    domain = top.get("domain", p_name, "astral.lan")
    dnsd = _dnsd(top.table("dns"), address, domain, warnings)
    dhcp_table = top.table("dhcp")
    dns = _client_dns(dhcp_table, dnsd, warnings)
    data = top.get("data", lambda v: resolve_path(base, v), base / "data")
    runtime_dir = top.get("runtime_dir", lambda v: resolve_path(base, v), base / "run")
    log_level = top.get("log_level", p_choice(*LOG_LEVELS), "info")

    dhcp = _dhcp(dhcp_table, address, network, gateway, dns, dnsd, warnings)
    tftp = _tftp(top.table("tftp"))
    http = _http(top.table("http"), address)
    menu = _menu(top.table("menu"))
    install = _install(top.table("install"))
    uefi_table = top.table("uefi")
    class_table = uefi_table.table("class")
    class_loaders = []
    for name in list(class_table.data):
        if not WORD.fullmatch(name):
            class_table.error(name, "is not a class name (letters, digits, . _ -)")
            class_table.used.add(name)
            continue
        class_loaders.append((name, class_table.get(name, p_choice("ipxe", "shim"), "ipxe")))
    class_table.finish()
    uefi = UefiConfig(loader=uefi_table.get("loader", p_choice("ipxe", "shim"), "ipxe"),
                      arm64_loader=uefi_table.get("arm64_loader",
                                                  p_choice("auto", "ipxe", "shim"), "auto"),
                      class_loaders=tuple(class_loaders))
    uefi_table.finish()
    service_table = top.table("service")
    service = ServiceConfig(user=service_table.get("user", p_user, "astralboot"))
    service_table.finish()
    admin = _admin(top.table("admin"), base, http.port)
    ipfs_table = top.table("ipfs")
    store = _store(top.table("store"), base, data)
    bus = _bus(top.table("bus"), base, runtime_dir)
    refs_path = base / "refs.toml"
    ipfs = _ipfs(ipfs_table, _read_refs(refs_path, errors))
    top.finish()

    if errors:
        raise ConfigErrors(errors) if len(errors) > 1 else errors[0]
    derived = frozenset(_all_keys() - present)
    return Config(path=file, refs_path=refs_path, interface=interface, address=address,
                  network=network, gateway=gateway, dns=dns, domain=domain, data=data,
                  runtime_dir=runtime_dir, log_level=log_level, dhcp=dhcp, tftp=tftp,
                  http=http, menu=menu, install=install, service=service, admin=admin, ipfs=ipfs,
                  store=store, bus=bus, dnsd=dnsd, uefi=uefi, derived=derived,
                  warnings=tuple(warnings))


def _translate_legacy(raw: dict[str, Any], warnings: list[str], file: Path) -> None:
    if "dns" in raw and not isinstance(raw["dns"], dict):
        # Before dnsd, the resolvers handed to clients were a top-level `dns`;
        # `dns` is dnsd's table now, and they are [dhcp] dns.
        value = raw.pop("dns")
        dhcp = raw.setdefault("dhcp", {})
        if isinstance(dhcp, dict) and "dns" not in dhcp:
            dhcp["dns"] = value
        warnings.append(f"{file}: dns: a list of resolvers at the top is read as [dhcp] dns "
                        "(the top-level [dns] is the DNS server's table)")
    for old, new in LEGACY_KEYS.items():
        if old not in raw:
            continue
        value = raw.pop(old)
        if value == "":
            # The original read an empty value as "unset": its default
            # (Domain, Data) is what this version's default is too.
            warnings.append(f"{file}: {old}: empty, the default is used")
            continue
        section, _, key = new.rpartition(".")
        target = raw.setdefault(section, {}) if section else raw
        if isinstance(target, dict) and key not in target:
            target[key] = value
        warnings.append(f"{file}: {old}: old name, read as {new}")
    for old in LEGACY_IGNORED.keys() & raw.keys():
        raw.pop(old)
        warnings.append(f"{file}: {old}: not used any more, ignored ({LEGACY_IGNORED[old]})")


def _client_dns(t: Table, dnsd: DnsConfig, warnings: list[str],
                dns: tuple[IPv4Address, ...] = ()) -> tuple[IPv4Address, ...]:
    """What clients are told to resolve with (option 6), from a table's ``dns``.

    With dnsd on, dnsd: a ``dns`` that says otherwise is not used, and the
    operator is told so. With it off, ``dns`` (``dns``'s default: ``dns``
    given, else none, and then option 6 is not sent at all).
    """
    given = t.get("dns", p_ips_or_none, None)
    if not dnsd.enabled:
        return given if given is not None else dns
    if given is not None and given != (dnsd.bind,):
        warnings.append(
            f"{t.file}: {t.key('dns')}: not handed to clients: with [dns] enabled they are "
            f"told to use dnsd at {dnsd.bind} (set [dns] enabled = false to hand them "
            f"{', '.join(map(str, given)) or 'no resolver'})")
    return (dnsd.bind,)


def _dnsd(t: Table, address: IPv4Address, domain: str, warnings: list[str]) -> DnsConfig:
    bind = t.get("bind", p_ip, address)
    if bind.is_unspecified:
        t.error("bind", "must be one address of this host: an answer has to come from the "
                        "address it was asked at")
        bind = address
    port = t.get("port", p_port, 53)
    if t.has("upstream"):
        upstream, source = t.get("upstream", p_upstreams, ()), "config"
    else:
        # The host's own resolvers, as dnsmasq reads them, but never dnsd itself.
        own = {str(bind), f"{bind}:{port}"} if port == 53 else {f"{bind}:{port}"}
        upstream = tuple(u for u in resolv_conf_servers(RESOLV_CONF) if u not in own)
        source = str(RESOLV_CONF) if upstream else ""
    cfg = DnsConfig(
        enabled=t.get("enabled", p_bool, True),
        domain=t.get("domain", p_name, domain).lower(),
        server_name=t.get("server_name", p_machine_name, _host_label()).lower(),
        bind=bind,
        port=port,
        upstream=upstream,
        upstream_from=source,
        clients=t.get("clients", p_networks, ()),
        ttl=int(t.get("ttl", p_seconds(0, 86400), 60)),
        rrl=float(t.get("rrl", p_fraction(0, 1_000_000), 200)),
        rrl_slip=t.get("rrl_slip", p_int_between(0, 10), 2),
        cache=t.get("cache", p_int_between(0, 1_000_000), 1024),
        forward_timeout=t.get("forward_timeout", p_seconds(0.1, 30), 2.0),
        forward_attempts=t.get("forward_attempts", p_int_between(1, 10), 3),
        log_queries=t.get("log_queries", p_bool, False),
    )
    if cfg.enabled and not cfg.upstream and "dns.upstream" not in t.present:
        warnings.append(f"{t.file}: dns.upstream: not set and {RESOLV_CONF} names no server; "
                        "dnsd answers only the boot network's own names")
    t.finish()
    return cfg


def _host_label() -> str:
    """This host's name as one DNS label (its first), or "server" when it is no label."""
    label = socket.gethostname().split(".", 1)[0].lower()
    return label if MACHINE_NAME.fullmatch(label) and label != "astralboot" else "server"


def _subnet(t: Table, network: IPv4Network | None, gateway: IPv4Address | None,
            dns: tuple[IPv4Address, ...], lease_time: int, relayed: bool,
            server: IPv4Address | None, dnsd: DnsConfig | None = None,
            warnings: list[str] | None = None) -> SubnetConfig | None:
    if network is None:
        network = t.get("network", p_network)
        if network is None:
            return None
        gateway = t.get("gateway", p_ip, None)
        if dnsd is not None and warnings is not None:
            dns = _client_dns(t, dnsd, warnings, dns)
        lease_time = int(t.get("lease_time", p_seconds(60, 365 * 86400), lease_time))
    avoid = {a for a in (server, gateway) if a is not None}
    try:
        fallback = default_range(network, avoid)
    except ValueError as exc:
        t.error("range", str(exc))
        return None
    start, end = t.get("range", p_range, fallback)
    if start not in network or end not in network:
        t.error("range", f"{start}-{end} is not inside {network}")
        return None
    if start == network.network_address or end == network.broadcast_address:
        t.error("range", f"{start}-{end} includes the network or broadcast address of {network}")
        return None
    return SubnetConfig(network=network, range_start=start, range_end=end, gateway=gateway,
                        dns=dns, lease_time=lease_time, relayed=relayed)


def _dhcp(t: Table, address: IPv4Address, network: IPv4Network, gateway: IPv4Address,
          dns: tuple[IPv4Address, ...], dnsd: DnsConfig, warnings: list[str]) -> DhcpConfig:
    lease_time = int(t.get("lease_time", p_seconds(60, 365 * 86400), 86400))
    local = _subnet(t, network, gateway, dns, lease_time, False, address)
    subnets = [local] if local else []
    for sub in t.tables("subnet"):
        cfg = _subnet(sub, None, None, dns, lease_time, True, None, dnsd, warnings)
        sub.finish()
        if cfg is None:
            continue
        clash = [s for s in subnets if s.network.overlaps(cfg.network)]
        if clash:
            sub.error("network", f"{cfg.network} overlaps {clash[0].network}")
            continue
        subnets.append(cfg)
    reservations: list[ReservationConfig] = []
    seen_macs: set[str] = set()
    for res in t.tables("reservation"):
        mac = res.get("mac", p_mac)
        addr = res.get("address", p_ip)
        name = res.get("name", p_machine_name, None)
        os_name = res.get("os", p_os_name, None)
        res.finish()
        if mac is None or addr is None:
            continue
        if mac in seen_macs:
            res.error("mac", f"{mac} is reserved twice")
        seen_macs.add(mac)
        if not any(addr in s.network for s in subnets):
            res.error("address", f"{addr} is in no configured subnet")
        reservations.append(ReservationConfig(mac=mac, address=addr, name=name, os=os_name))
    dhcp = DhcpConfig(
        subnets=tuple(subnets), reservations=tuple(reservations), lease_time=lease_time,
        offer_hold=int(t.get("offer_hold", p_seconds(1, 3600), 30)),
        decline_quarantine=int(t.get("decline_quarantine", p_seconds(0, 7 * 86400), 3600)),
        offer_share=t.get("offer_share", p_fraction(0.05, 1.0), 0.5),
        proxy=t.get("proxy", p_bool, False),
        rogue_guard=t.get("rogue_guard", p_bool, True),
        rogue_listen=t.get("rogue_listen", p_seconds(0, 60), ROGUE_LISTEN),
        port=t.get("port", p_port, 67),
        client_port=t.get("client_port", p_port, 68),
    )
    t.finish()
    return dhcp


def _tftp(t: Table) -> TftpConfig:
    def memory_max(v: Any) -> int:
        size = p_size(v)
        if size < 1 << 20:  # 0 would not mean "no bound" here, unlike store.cache_max
            raise ValueError(f"{size} bytes is too small; at least \"1M\"")
        return size

    cfg = TftpConfig(
        port=t.get("port", p_port, 69),
        single_port=t.get("single_port", p_bool, False),
        max_sessions=t.get("max_sessions", p_int_between(1, 100_000), 512),
        per_client=t.get("per_client", p_int_between(1, 1000), 8),
        timeout=t.get("timeout", p_seconds(0.1, 255), 1.0),
        retries=t.get("retries", p_int_between(1, 100), 6),
        memory_cache=t.get("memory_cache", p_int_between(0, 1 << 34), 16 << 20),
        memory_max=t.get("memory_max", memory_max, 256 << 20),
    )
    t.finish()
    return cfg


def _http(t: Table, address: IPv4Address) -> HttpConfig:
    port = t.get("port", p_port, 80)
    default_url = f"http://{address}" + ("" if port == 80 else f":{port}")
    public_url = t.get("public_url", p_str, default_url).rstrip("/")
    if not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", public_url):
        t.error("public_url", f"{public_url!r} is not an http:// URL")
    cfg = HttpConfig(
        port=port,
        bind=t.get("bind", p_str, "0.0.0.0"),
        workers=t.get("workers", p_int_between(1, 256), max(2, os.cpu_count() or 2)),
        threads=t.get("threads", p_int_between(1, 256), 4),
        public_url=public_url,
        header_timeout=t.get("header_timeout", p_seconds(1, 600), 10.0),
        body_timeout=t.get("body_timeout", p_seconds(1, 3600), 30.0),
        per_client=t.get("per_client", p_int_between(1, 100_000), 64),
        self_service=t.get("self_service", p_bool, True),
    )
    t.finish()
    return cfg


_CRYPT = re.compile(r"\$(1|5|6|y|2[aby])\$[./A-Za-z0-9$=,]{8,200}")


def p_password_hash(v: Any) -> str:
    text = p_str(v)
    if not _CRYPT.fullmatch(text):
        raise ValueError("not a crypt(3) hash like $6$salt$...; make one with "
                         "`mkpasswd -m sha-512` or let `astralboot init` do it")
    return text


def _admin(t: Table, base: Path, http_port: int) -> AdminConfig:
    path = lambda v: resolve_path(base, v)  # noqa: E731
    cfg = AdminConfig(
        port=t.get("port", p_int_between(0, 65535), 0),
        bind=t.get("bind", p_str, "127.0.0.1"),
        tls_cert=t.get("tls_cert", path, None),
        tls_key=t.get("tls_key", path, None),
        client_ca=t.get("client_ca", path, None),
        boot_face=t.get("boot_face", p_bool, True),
    )
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        t.error("tls_key" if cfg.tls_key is None else "tls_cert",
                "tls_cert and tls_key go together")
    if cfg.client_ca is not None and cfg.tls_cert is None:
        t.error("client_ca", "client certificates need TLS: set tls_cert and tls_key too")
    if cfg.port and cfg.port == http_port and cfg.bind in ("0.0.0.0", ""):
        t.error("port", f"{cfg.port} is [http] port already")
    if not cfg.port and not cfg.boot_face:
        t.error("boot_face", "false needs [admin] port: the admin face would be nowhere")
    t.finish()
    return cfg


def p_user(v: Any) -> str:
    text = p_str(v)
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}\$?", text):
        raise ValueError(f"{text!r} is not a user name")
    return text


def _install(t: Table) -> InstallConfig:
    cfg = InstallConfig(password_hash=t.get("password_hash", p_password_hash, None))
    t.finish()
    return cfg


def _menu(t: Table) -> MenuConfig:
    cfg = MenuConfig(
        # Nothing installs unless someone decided it: an unassigned machine
        # boots its own disk after the menu unless the operator names an OS.
        default=t.get("default", lambda v: p_os_name(v) if v else "", "local"),
        timeout=int(t.get("timeout", p_seconds(0, 3600), 10)),
    )
    t.finish()
    return cfg


def _ipfs(t: Table, root: str | None) -> IpfsConfig:
    cfg = IpfsConfig(
        enabled=t.get("enabled", p_bool, False),
        api=t.get("api", p_multiaddr, "/ip4/127.0.0.1/tcp/5001"),
        timeout=t.get("timeout", p_seconds(0.1, 600), 10.0),
        root=root,
    )
    t.finish()
    return cfg


def _store(t: Table, base: Path, data: Path) -> StoreConfig:
    cfg = StoreConfig(
        database=t.get("database", lambda v: resolve_database(base, v),
                       f"sqlite:///{data / 'astralboot.db'}"),
        cache=t.get("cache", lambda v: resolve_path(base, v), base / "cache"),
        cache_max=t.get("cache_max", p_size, 0),
    )
    t.finish()
    return cfg


def _bus(t: Table, base: Path, runtime_dir: Path) -> BusConfig:
    default = f"ipc://{runtime_dir / 'bus.sock'}"
    endpoint = t.get("endpoint", lambda v: resolve_endpoint(base, v), None)
    if endpoint is None:
        try:
            endpoint = resolve_endpoint(base, default)
        except ValueError as exc:
            t.error("endpoint", f"the default {exc}")
            endpoint = default
    events = t.get("events", lambda v: resolve_endpoint(base, v), next_port_endpoint(endpoint))
    cfg = BusConfig(endpoint=endpoint, events=events,
                    deadline=t.get("deadline", p_seconds(0.05, 120), 3.0),
                    keys=t.get("keys", lambda v: resolve_path(base, v), base / "keys"),
                    insecure=t.get("insecure", p_bool, False))
    t.finish()
    return cfg


_CID = re.compile(r"^(Qm[1-9A-HJ-NP-Za-km-z]{44}|b[a-z2-7]{20,}|[zfFmMuU][0-9A-Za-z+/=_-]{20,})$")


def _read_refs(path: Path, errors: list[ConfigError]) -> str | None:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        errors.append(ConfigError(path, "(file)", str(exc)))
        return None
    boot = raw.get("boot")
    if boot is None:
        return None
    if not isinstance(boot, str) or not _CID.match(boot):
        errors.append(ConfigError(path, "boot", f"{boot!r} is not an IPFS CID"))
        return None
    return boot


def _all_keys() -> set[str]:
    return {
        "interface", "address", "network", "gateway", "domain", "data", "runtime_dir",
        "log_level", "dhcp.dns", "dhcp.range", "dhcp.lease_time", "dhcp.offer_hold",
        "dhcp.decline_quarantine", "dhcp.offer_share", "dhcp.proxy", "dhcp.rogue_guard",
        "dhcp.rogue_listen",
        "dhcp.port", "dhcp.client_port", "tftp.port", "tftp.single_port", "tftp.max_sessions",
        "tftp.per_client", "tftp.timeout", "tftp.retries", "tftp.memory_cache", "tftp.memory_max",
        "http.port",
        "http.bind", "http.workers", "http.threads", "http.public_url", "http.header_timeout",
        "http.body_timeout", "http.per_client", "http.self_service", "menu.default", "install.password_hash", "service.user", "admin.port", "admin.bind",
        "admin.tls_cert", "admin.tls_key", "admin.client_ca", "admin.boot_face",
        "menu.timeout", "ipfs.enabled", "ipfs.api", "ipfs.timeout", "store.database",
        "store.cache", "store.cache_max", "bus.endpoint", "bus.events", "bus.deadline", "bus.keys", "bus.insecure",
        "dns.enabled", "dns.domain", "dns.server_name", "dns.bind", "dns.port", "dns.upstream",
        "dns.clients", "dns.ttl", "dns.rrl", "dns.rrl_slip", "dns.cache", "dns.forward_timeout",
        "dns.forward_attempts", "dns.log_queries", "uefi.loader", "uefi.arm64_loader",
    }
