"""Helpers the dnsd tests share: a served lab zone, queries built with
dnspython, and replies read back."""

from __future__ import annotations

from collections import Counter
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from astralboot.services.dnsd.policy import DnsPolicy, Reply
from astralboot.services.dnsd.ratelimit import ResponseRateLimit
from astralboot.services.dnsd.zone import Zone

DOMAIN = "lab.example"
SERVER_IP = "192.0.2.1"
SUBNETS = ("192.0.2.0/24", "198.51.100.0/25")
CLIENT = ("192.0.2.50", 40000)
OUTSIDER = ("203.0.113.9", 40000)

# The lab's hosts: (MAC, name from DHCP, address).
HOSTS = (
    ("52:54:00:00:00:01", "web1", "192.0.2.10"),
    ("52:54:00:00:00:02", "Web1", "192.0.2.11"),  # same name, another MAC: web1-2
    ("52:54:00:00:00:03", "db_Primary.other.org", "198.51.100.20"),  # db-primary
    ("52:54:00:00:00:04", "far", "10.9.9.9"),  # outside the served subnets
)


def lab_zone(**kw: Any) -> Zone:
    zone = Zone(DOMAIN, "bootsrv", SERVER_IP, SUBNETS, **kw)
    for mac, name, ip in HOSTS:
        zone.set_host(mac, name, ip)
    return zone


def lab_policy(*, forwarding: bool = True, rrl: ResponseRateLimit | None = None,
               zone: Zone | None = None) -> DnsPolicy:
    return DnsPolicy(zone if zone is not None else lab_zone(),
                     clients=SUBNETS + ("127.0.0.0/8",), forwarding=forwarding, rrl=rrl,
                     stats=Counter())


def query(name: str, rdtype: str | int = "A", *, edns: int = 0, rd: bool = True,
          payload: int = 1232, qid: int = 0x1234, rdclass: str = "IN") -> bytes:
    msg = dns.message.make_query(name, rdtype, rdclass, use_edns=edns, payload=payload, id=qid)
    if not rd:
        msg.flags &= ~dns.flags.RD
    return msg.to_wire()


def reply_of(actions: list[Any]) -> dns.message.Message:
    """The one reply among ``actions``, parsed."""
    assert len(actions) == 1 and isinstance(actions[0], Reply), actions
    return dns.message.from_wire(actions[0].data)


def records(msg: dns.message.Message, section: str = "answer") -> list[str]:
    """Each record as ``name type rdata`` in lower case, TTLs left out."""
    out = []
    for rrset in getattr(msg, section):
        for rd in rrset:
            out.append(f"{rrset.name.to_text().lower()} {dns.rdatatype.to_text(rrset.rdtype)} "
                       f"{rd.to_text().lower()}")
    return out


def rcode_text(msg: dns.message.Message) -> str:
    return dns.rcode.to_text(msg.rcode())
