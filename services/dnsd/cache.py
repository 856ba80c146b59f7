"""The forwarder's answers, kept while their TTLs last.

Keyed by the question (name lower-cased, type, class), bounded: at most
``size`` entries, the least recently used one goes first. An entry lives
as long as the smallest TTL among its records (capped at ``max_ttl``); a
negative answer (NXDOMAIN, or NOERROR with no answer) as long as its SOA's
TTL or its MINIMUM field, whichever is smaller (RFC 2308 5, capped at
``max_negative_ttl``), and not at all without an SOA. Truncated answers,
failures and TTL 0 are never kept. Each record served from the cache has
its TTL lowered by the time it has spent there.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

MAX_TTL = 86400  # a day
MAX_NEGATIVE_TTL = 3600  # RFC 2308 5 suggests one to three hours

QuestionKey = tuple[dns.name.Name, int, int]


@dataclass(frozen=True, slots=True)
class Sections:
    """What an answer says, apart from its header: rcode and record sets."""

    rcode: dns.rcode.Rcode
    answer: tuple[dns.rrset.RRset, ...] = ()
    authority: tuple[dns.rrset.RRset, ...] = ()
    additional: tuple[dns.rrset.RRset, ...] = ()

    @classmethod
    def of(cls, msg: dns.message.Message) -> Sections:
        return cls(msg.rcode(), tuple(msg.answer), tuple(msg.authority), tuple(msg.additional))


@dataclass(frozen=True, slots=True)
class _Entry:
    sections: Sections
    stored: float
    expires: float
    cap: int


def _negative(sections: Sections) -> bool:
    return sections.rcode == dns.rcode.NXDOMAIN or not sections.answer


def lifetime(sections: Sections) -> int | None:
    """How long ``sections`` may be kept, uncapped; None if never."""
    if sections.rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return None
    if _negative(sections):
        soa = next((r for r in sections.authority if r.rdtype == dns.rdatatype.SOA and len(r)), None)
        if soa is None:
            return None  # RFC 2308 5: no SOA, no negative caching
        return min(soa.ttl, soa[0].minimum)  # type: ignore[attr-defined]
    ttls = [r.ttl for part in (sections.answer, sections.authority, sections.additional)
            for r in part]
    return min(ttls)


def aged(rrset: dns.rrset.RRset, cap: int, elapsed: float) -> dns.rrset.RRset:
    """A copy of ``rrset`` with its (capped) TTL lowered by ``elapsed`` seconds."""
    copy = rrset.copy()
    copy.ttl = max(0, math.floor(min(rrset.ttl, cap) - elapsed))
    return copy


class AnswerCache:
    """Bounded LRU of answers by question key; ``now`` is any monotonic clock."""

    def __init__(self, size: int, *, max_ttl: int = MAX_TTL,
                 max_negative_ttl: int = MAX_NEGATIVE_TTL) -> None:
        self.size = size
        self.max_ttl = max_ttl
        self.max_negative_ttl = max_negative_ttl
        self._entries: OrderedDict[QuestionKey, _Entry] = OrderedDict()

    def put(self, key: QuestionKey, msg: dns.message.Message, now: float) -> bool:
        """Keep ``msg``'s answer if it may be kept; True if it was."""
        if msg.flags & dns.flags.TC or self.size <= 0:
            return False
        sections = Sections.of(msg)
        ttl = lifetime(sections)
        if ttl is None:
            return False
        cap = self.max_negative_ttl if _negative(sections) else self.max_ttl
        ttl = min(ttl, cap)
        if ttl <= 0:
            return False
        self._entries[key] = _Entry(sections, now, now + ttl, cap)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return True

    def get(self, key: QuestionKey, now: float) -> Sections | None:
        """The answer kept for ``key``, TTLs lowered by its age; None if none or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry.expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        elapsed = max(0.0, now - entry.stored)
        s = entry.sections
        return Sections(s.rcode,
                        tuple(aged(r, entry.cap, elapsed) for r in s.answer),
                        tuple(aged(r, entry.cap, elapsed) for r in s.authority),
                        tuple(aged(r, entry.cap, elapsed) for r in s.additional))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries
