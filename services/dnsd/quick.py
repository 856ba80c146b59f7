"""Authoritative answers kept as bytes, for the queries that look like the last ones.

Most of what a boot network asks is the same few names over and over
(``astralboot``, a mirror, each machine's own name), and building an
answer with dnspython costs a hundred microseconds. So once the policy has
answered a plain UDP query for one of our names, :class:`QuickAnswers`
keeps the rendered reply, keyed by what the query's bytes say: the name
(letter case folded), type and class, the header flags, and the EDNS
record as sent. The next query with the same key gets those bytes with its
own id and its own question (its letter case kept, as RFC 1035 asks); every
name in the kept answer is a compression pointer into the question, so it
reads in the asker's case too.

Only plain queries take this path: one question, no answer or authority
records, at most one additional record that is an OPT without options, no
compression in the name, nothing after it. Anything else goes through the
full policy. The kept answers are dropped whenever the zone's serial moves
(a lease came or went), and there are at most ``max_entries`` of them (the
oldest goes first).

NXDOMAIN for a name one label below the domain (``nosuch.astral.lan``)
does not depend on the name at all past the question: the SOA's names
point into the question's domain part, at an offset set by the length of
the first label. Such answers are kept once per first-label length, not
per name, so a client asking random names costs no more than one asking
the same name, and does not push the names that exist out of the store.

The checks the policy makes are made here too: the client must be in a
served network (remembered per address), and response-rate limiting takes
its token with the same key the policy would use.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from astralboot.services.dnsd.ratelimit import ResponseRateLimit, Verdict
from astralboot.services.dnsd.zone import Zone

HEADER = 12
MAX_QUERY = 512  # a plain query is far smaller; anything bigger takes the full path
_OPT_TYPE = b"\x00\x29"
TC = 0x02  # in the header's third byte
_ALLOWED_MEMO = 65536


def in_networks(ip: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
                ) -> bool:
    """Whether ``ip`` (an IPv4-mapped IPv6 address counts as its IPv4) is in ``networks``."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in net for net in networks)


@dataclass(frozen=True, slots=True)
class Kept:
    data: bytes  # the whole reply as rendered for the first asker
    question_end: int  # where the question section ends (same for every asker)
    rrl_key: Hashable
    rcode_stat: str  # e.g. "rcode_noerror"


def query_key(data: bytes) -> tuple[bytes, bytes, int] | None:
    """(key, question bytes, end of the question) of a plain query, else None."""
    n = len(data)
    if n < HEADER + 5 or n > MAX_QUERY:
        return None
    if data[2] & 0xFA:  # QR, an opcode other than QUERY, AA or TC
        return None
    if data[4:10] != b"\x00\x01\x00\x00\x00\x00" or data[10] != 0 or data[11] > 1:
        return None
    at = HEADER
    while True:
        length = data[at]
        if length == 0:
            break
        if length > 63:  # a compression pointer or a reserved label type
            return None
        at += length + 1
        if at >= n or at - HEADER > 254:
            return None
    end = at + 5  # the root label, type, class
    if end > n:
        return None
    extra = data[end:]
    if data[11] == 1:
        # one OPT: root name, type 41, payload, extended rcode/version/flags, no options
        if len(extra) != 11 or extra[0] != 0 or extra[1:3] != _OPT_TYPE or extra[9:11] != b"\x00\x00":
            return None
    elif extra:
        return None
    question = data[HEADER:end]
    return question.lower() + data[2:4] + extra, question, end


class QuickAnswers:
    """Kept replies by query key; :meth:`answer` is the whole hot path."""

    def __init__(self, zone: Zone,
                 clients: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
                 rrl: ResponseRateLimit | None, stats: Counter[str],
                 max_entries: int = 8192) -> None:
        self.zone = zone
        self.origin = zone.origin.to_wire().lower()  # type: ignore[union-attr]
        # first labels whose NXDOMAIN answer would compress differently
        self.not_nx = {zone.primary.labels[0].lower(), b"hostmaster"}
        self.clients = tuple(clients)
        self.rrl = rrl
        self.stats = stats
        self.max_entries = max_entries
        self.serial = -1
        self._kept: dict[bytes, Kept] = {}
        self._allowed: dict[str, bool] = {}

    def __len__(self) -> int:
        return len(self._kept)

    def answer(self, data: bytes, client_ip: str, now: float, serial: int) -> bytes | None:
        """The reply to send (b"" to send none: rate-limited), or None: ask the policy."""
        if serial != self.serial:
            self._kept.clear()
            self.serial = serial
            return None
        found = query_key(data)
        if found is None:
            return None
        kept = self._kept.get(found[0])
        if kept is None:
            nx = self._nx_key(found[0])
            kept = self._kept.get(nx) if nx is not None else None
        if kept is None or not self._is_allowed(client_ip):
            return None
        if self.rrl is not None:
            verdict = self.rrl.check(client_ip, kept.rrl_key, now)
            if verdict is Verdict.SLIP:
                return self._slipped(data, kept, found[1])
            if verdict is not Verdict.SEND:
                return self._dropped()
        stats = self.stats
        stats["queries"] += 1
        stats["authoritative"] += 1
        stats["quick"] += 1
        stats[kept.rcode_stat] += 1
        end = kept.question_end
        return data[:2] + kept.data[2:HEADER] + found[1] + kept.data[end:]

    def learn(self, query: bytes, reply: bytes, rrl_key: Hashable, rcode_stat: str,
              serial: int) -> None:
        """Keep ``reply``, the full authoritative answer the policy sent to ``query``."""
        if serial != self.serial:
            self._kept.clear()
            self.serial = serial
        found = query_key(query)
        if found is None:
            return
        key, question, end = found
        if reply[HEADER:end] != question:  # the reply must echo the question as sent
            return
        if rcode_stat == "rcode_nxdomain":
            key = self._nx_key(key) or key
        if len(self._kept) >= self.max_entries:
            del self._kept[next(iter(self._kept))]  # the oldest kept
        self._kept[key] = Kept(reply, end, rrl_key, rcode_stat)

    def _nx_key(self, key: bytes) -> bytes | None:
        """The key shared by every name one label below the domain that does not
        exist, with the same label length, type, flags and EDNS; else None."""
        length = key[0]
        name_end = 1 + length + len(self.origin)
        if length == 0 or key[1 + length:name_end] != self.origin:
            return None
        label = key[1:1 + length]
        if label in self.not_nx or label.decode("latin-1") in self.zone.labels():
            return None
        return b"\xffNX" + bytes([length]) + key[name_end:]

    def _slipped(self, data: bytes, kept: Kept, question: bytes) -> bytes:
        """No records and TC, as the policy's slip: "ask me again over TCP"."""
        self.stats["queries"] += 1
        self.stats["authoritative"] += 1
        self.stats["rrl_slipped"] += 1
        edns = data[11] == 1
        flags = bytes([kept.data[2] | TC, kept.data[3] & 0xF0])  # rcode NOERROR
        counts = b"\x00\x01\x00\x00\x00\x00\x00" + (b"\x01" if edns else b"\x00")
        return data[:2] + flags + counts + question + (kept.data[-11:] if edns else b"")

    def _dropped(self) -> bytes:
        self.stats["queries"] += 1
        self.stats["authoritative"] += 1
        self.stats["rrl_dropped"] += 1
        self.stats["drop_rate_limited"] += 1
        return b""

    def _is_allowed(self, ip: str) -> bool:
        known = self._allowed.get(ip)
        if known is None:
            known = in_networks(ip, self.clients)
            if len(self._allowed) >= _ALLOWED_MEMO:
                self._allowed.clear()
            self._allowed[ip] = known
        return known
