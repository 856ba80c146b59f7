"""The authoritative data of the boot network and what it says about a name.

A :class:`Zone` holds the hosts (by MAC: a label and an IPv4 address, from
leases and reservations), the server's own names (``astralboot`` and the
host's name, both to the server's address), and the zones it answers for:
the forward zone (``[dns] domain``) and, for each served subnet, the
in-addr.arpa zones that cover it. :meth:`Zone.resolve` answers a name and
type with records, NODATA or NXDOMAIN, each with the SOA where RFC 2308 puts
it, or None when the name is in none of our zones.

Reverse zones sit on octet boundaries: a /24 or /16 subnet has its own, a
/20 has the sixteen /24 zones inside it, a /25 the /24 around it (classless
delegation, RFC 2317, is not attempted). PTR records exist only for
addresses inside a served subnet; every other name in a reverse zone is
NXDOMAIN, except the empty non-terminals above a PTR (RFC 8020).

Every change that alters an answer increases the SOA serial, so a
secondary or a cache that checks it sees the new data at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network

import dns.exception
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.NS import NS
from dns.rdtypes.ANY.PTR import PTR
from dns.rdtypes.ANY.SOA import SOA
from dns.rdtypes.IN.A import A

from astralboot.common.errors import AstralBootError
from astralboot.services.dnsd.labels import host_label, unique_label

SERVICE_LABEL = "astralboot"
MAX_HOSTS = 4096
SERIAL_MAX = 0xFFFFFFFF
IN_ADDR_ARPA = dns.name.from_text("in-addr.arpa.")
_DOMAIN_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
IN = dns.rdataclass.IN
# One record set per name answers ANY (RFC 8482), the first of these present.
_ANY_ORDER = (dns.rdatatype.A, dns.rdatatype.PTR, dns.rdatatype.SOA)


class ZoneError(AstralBootError):
    """The zone's settings cannot make a zone (a bad domain, no subnet)."""


class ZoneFull(AstralBootError):
    """A new host would exceed the zone's bound on hosts."""

    def __init__(self, mac: str, limit: int) -> None:
        self.mac = mac
        self.limit = limit
        super().__init__(f"DNS zone full ({limit} hosts): no record for {mac}")


@dataclass(frozen=True, slots=True)
class Host:
    mac: str  # "" for the server's own names
    wanted: str  # the label its name cleans to
    label: str  # the label it holds: ``wanted``, or ``wanted-N`` when that was taken
    ip: IPv4Address
    fixed: bool = False  # the operator chose the name (a reservation, a machine's name)


@dataclass(frozen=True, slots=True)
class Lookup:
    """What the zone says about a name and type (dnspython record sets, owner
    names in the query's own case)."""

    zone: dns.name.Name  # the origin of the zone that answered
    rcode: dns.rcode.Rcode  # NOERROR (records or NODATA) or NXDOMAIN
    answer: tuple[dns.rrset.RRset, ...] = ()
    authority: tuple[dns.rrset.RRset, ...] = ()
    additional: tuple[dns.rrset.RRset, ...] = ()

    @property
    def nodata(self) -> bool:
        return self.rcode == dns.rcode.NOERROR and not self.answer


def reverse_prefixes(network: IPv4Network) -> list[tuple[int, ...]]:
    """The octets that name each in-addr.arpa zone covering ``network``."""
    zone_len = min(24, max(8, -(-network.prefixlen // 8) * 8))
    if network.prefixlen >= zone_len:
        nets: Iterable[IPv4Network] = [network.supernet(new_prefix=zone_len)]
    else:
        nets = network.subnets(new_prefix=zone_len)
    return [tuple(net.network_address.packed[:zone_len // 8]) for net in nets]


def reverse_name(octets: Iterable[int]) -> dns.name.Name:
    return dns.name.Name([str(o).encode() for o in reversed(tuple(octets))] + list(IN_ADDR_ARPA.labels))


def _octet(label: bytes) -> int | None:
    if not (1 <= len(label) <= 3 and label.isdigit()) or (len(label) > 1 and label[:1] == b"0"):
        return None
    value = int(label)
    return value if value <= 255 else None


def _domain(text: str) -> dns.name.Name:
    try:
        name = dns.name.from_text(text.strip().lower().rstrip(".") + ".")
    except dns.exception.DNSException as exc:
        raise ZoneError(f"domain {text!r}: {exc}") from exc
    labels = [label.decode("ascii", "replace") for label in name.labels[:-1]]
    if not labels or not all(_DOMAIN_LABEL.fullmatch(label) for label in labels):
        raise ZoneError(f"domain {text!r}: not a host name (letters, digits, hyphens)")
    return name


class Zone:
    """Hosts by MAC, the server's names, and the answers they make."""

    def __init__(self, domain: str, server_name: str | None, server_ip: IPv4Address | str,
                 subnets: Iterable[IPv4Network | str], *, ttl: int = 60, negative_ttl: int = 30,
                 max_hosts: int = MAX_HOSTS, serial: int = 1, refresh: int = 3600,
                 retry: int = 600, expire: int = 86400) -> None:
        self.origin = _domain(domain)
        self.server_ip = IPv4Address(server_ip)
        self.subnets = tuple(IPv4Network(s, strict=False) for s in subnets)
        if not self.subnets:
            raise ZoneError("no served subnet: no reverse zone to answer for")
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_hosts = max_hosts
        self.serial = serial & SERIAL_MAX or 1
        self._prefixes: frozenset[bytes] = frozenset()
        self._prefixes_at = -1  # the serial _prefixes were worked out at
        self._timers = (refresh, retry, expire)
        self._reverse: dict[tuple[int, ...], dns.name.Name] = {}
        for net in self.subnets:
            for octets in reverse_prefixes(net):
                self._reverse[octets] = reverse_name(octets)
        self._hosts: dict[str, Host] = {}  # by MAC
        self._by_label: dict[str, Host] = {}  # the server's names too
        self._ptr: dict[IPv4Address, Host] = {}
        own = host_label(server_name) if server_name else None
        for label in dict.fromkeys(filter(None, (own, SERVICE_LABEL))):
            self._by_label[label] = Host("", label, label, self.server_ip)
        # The NS and SOA MNAME: the host's own name when it has one.
        self.primary = dns.name.Name([(own or SERVICE_LABEL).encode()] + list(self.origin.labels))
        self._server_ptr = self._serves(self.server_ip)

    # -- hosts ----------------------------------------------------------------

    def set_host(self, mac: str, name: str | None, ip: IPv4Address | str, *,
                 fixed: bool = False) -> str | None:
        """Give the host at ``mac`` the name and address; the label it got, or
        None (no usable name: no record, and any old one is gone).

        ``fixed``: the operator chose the name (a reservation, a machine's
        name in the store), so it takes its label back from a host that only
        named itself over DHCP, which moves to the next free ``-N``. A name
        a client chose never displaces another host.
        """
        mac = mac.lower()
        wanted = host_label(name)
        address = IPv4Address(ip)
        old = self._hosts.get(mac)
        if wanted is None:
            self.remove_host(mac)
            return None
        if old is not None and (old.wanted, old.ip, old.fixed) == (wanted, address, fixed):
            return old.label  # a renewal: nothing changes, nor does the serial
        if old is None and len(self._hosts) >= self.max_hosts:
            raise ZoneFull(mac, self.max_hosts)
        if old is not None:
            self._forget(old)
        holder = self._by_label.get(wanted)
        displaced = holder if fixed and holder is not None and holder.mac and not holder.fixed \
            else None
        if displaced is not None:
            label = wanted
        elif old is not None and old.wanted == wanted and old.label not in self._by_label:
            # A host keeps the label it holds as long as it asks for the
            # same name: a name taken later by another never moves it.
            label = old.label
        else:
            label = unique_label(wanted, self._by_label)
        host = Host(mac, wanted, label, address, fixed)
        self._hosts[mac] = host
        self._by_label[label] = host
        self._ptr[address] = host
        if displaced is not None:
            moved = replace(displaced, label=unique_label(displaced.wanted, self._by_label))
            self._hosts[moved.mac] = moved
            self._by_label[moved.label] = moved
            if self._ptr.get(moved.ip) is displaced:
                self._ptr[moved.ip] = moved
        self._changed()
        return label

    def remove_host(self, mac: str) -> bool:
        """The host at ``mac`` is gone (lease released or expired); its name is free."""
        host = self._hosts.pop(mac.lower(), None)
        if host is None:
            return False
        self._forget(host)
        self._changed()
        return True

    def _forget(self, host: Host) -> None:
        self._hosts.pop(host.mac, None)
        if self._by_label.get(host.label) is host:
            del self._by_label[host.label]
        if self._ptr.get(host.ip) is host:
            del self._ptr[host.ip]
            for other in self._hosts.values():  # another host at that address keeps a PTR
                if other.ip == host.ip:
                    self._ptr[host.ip] = other
                    break

    def _changed(self) -> None:
        self.serial = self.serial % SERIAL_MAX + 1

    def labels(self) -> Mapping[str, Host]:
        """Every label in the forward zone (hosts and the server's names), lower case."""
        return self._by_label

    def hosts(self) -> Iterator[Host]:
        return iter(list(self._hosts.values()))

    def host(self, mac: str) -> Host | None:
        return self._hosts.get(mac.lower())

    def __len__(self) -> int:
        return len(self._hosts)

    def _serves(self, ip: IPv4Address) -> bool:
        return any(ip in net for net in self.subnets)

    # -- names ----------------------------------------------------------------

    @property
    def origins(self) -> tuple[dns.name.Name, ...]:
        return (self.origin, *self._reverse.values())

    def zone_of(self, qname: dns.name.Name) -> dns.name.Name | None:
        """The origin of the zone that ``qname`` falls in, or None."""
        if qname.is_subdomain(IN_ADDR_ARPA):
            octets: list[int] = []
            found = None
            for label in reversed(qname.labels[:-len(IN_ADDR_ARPA.labels)]):
                value = _octet(label)
                if value is None or len(octets) == 3:
                    break
                octets.append(value)
                found = self._reverse.get(tuple(octets), found)
            if found is not None:
                return found
        return self.origin if qname.is_subdomain(self.origin) else None

    def resolve(self, qname: dns.name.Name, rdtype: int) -> Lookup | None:
        """Records, NODATA or NXDOMAIN for ``qname``/``rdtype`` in class IN,
        or None when the name is not ours to answer."""
        origin = self.zone_of(qname)
        if origin is None:
            return None
        if origin is self.origin:
            node = self._forward_node(qname)
        else:
            node = self._reverse_node(origin, qname)
        if node is None:
            return Lookup(origin, dns.rcode.NXDOMAIN, authority=(self._negative_soa(origin),))
        if rdtype == dns.rdatatype.ANY:
            rdtype = next((t for t in _ANY_ORDER if t in node), dns.rdatatype.NONE)
        rdata = node.get(rdtype)
        if rdata is None:
            return Lookup(origin, dns.rcode.NOERROR, authority=(self._negative_soa(origin),))
        ttl = self.ttl
        answer = dns.rrset.from_rdata(qname, ttl, rdata)
        additional: tuple[dns.rrset.RRset, ...] = ()
        if rdtype == dns.rdatatype.NS:
            additional = (dns.rrset.from_rdata(self.primary, ttl, A(IN, dns.rdatatype.A,
                                                                    str(self.server_ip))),)
        return Lookup(origin, dns.rcode.NOERROR, answer=(answer,), additional=additional)

    def _apex(self, origin: dns.name.Name) -> dict[int, dns.rdata.Rdata]:
        refresh, retry, expire = self._timers
        return {
            dns.rdatatype.SOA: SOA(IN, dns.rdatatype.SOA, self.primary,
                                   dns.name.Name([b"hostmaster"] + list(self.origin.labels)),
                                   self.serial, refresh, retry, expire, self.negative_ttl),
            dns.rdatatype.NS: NS(IN, dns.rdatatype.NS, self.primary),
        }

    def _negative_soa(self, origin: dns.name.Name) -> dns.rrset.RRset:
        # A negative answer lives min(SOA TTL, SOA MINIMUM) (RFC 2308 3, 5).
        return dns.rrset.from_rdata(origin, min(self.ttl, self.negative_ttl),
                                    self._apex(origin)[dns.rdatatype.SOA])

    def _forward_node(self, qname: dns.name.Name) -> dict[int, dns.rdata.Rdata] | None:
        below = qname.labels[:len(qname.labels) - len(self.origin.labels)]
        if not below:
            return self._apex(self.origin)
        if len(below) > 1:
            return None
        host = self._by_label.get(below[0].decode("latin-1").lower())
        if host is None:
            return None
        return {dns.rdatatype.A: A(IN, dns.rdatatype.A, str(host.ip))}

    def _ptr_prefixes(self) -> frozenset[bytes]:
        """The first 1-3 octets of every address with a PTR: the empty non-terminals,
        worked out again only after a change (a query must not cost one pass per host)."""
        if self._prefixes_at != self.serial:
            below = [ip for ip in self._ptr if self._serves(ip)]
            if self._server_ptr:
                below.append(self.server_ip)
            self._prefixes = frozenset(ip.packed[:n] for ip in below for n in (1, 2, 3))
            self._prefixes_at = self.serial
        return self._prefixes

    def _reverse_node(self, origin: dns.name.Name,
                      qname: dns.name.Name) -> dict[int, dns.rdata.Rdata] | None:
        if qname == origin:
            return self._apex(origin)
        octets = [_octet(label) for label in reversed(qname.labels[:-len(IN_ADDR_ARPA.labels)])]
        if len(octets) > 4 or any(o is None for o in octets):
            return None
        if len(octets) < 4:  # an empty non-terminal if some PTR lies below it
            return {} if bytes(octets) in self._ptr_prefixes() else None  # type: ignore[arg-type]
        address = IPv4Address(bytes(octets))  # type: ignore[arg-type]
        if not self._serves(address):
            return None
        if address == self.server_ip:
            target = self.primary
        else:
            host = self._ptr.get(address)
            if host is None:
                return None
            target = dns.name.Name([host.label.encode()] + list(self.origin.labels))
        return {dns.rdatatype.PTR: PTR(IN, dns.rdatatype.PTR, target)}
