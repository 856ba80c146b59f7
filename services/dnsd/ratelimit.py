"""Response-rate limiting for the answers dnsd makes itself (BIND's RRL shape).

A DNS server that answers UDP can be aimed at a victim: forged queries with
the victim's address make the server send it answers. The limit is a token
bucket per (client network, response key): ``rate`` responses a second,
``burst`` at once. The client network is the /24 (IPv4) or /56 (IPv6)
around the address, so one forged source cannot dodge the limit by varying
its last bits; the key is chosen by the policy so that one rack booting at
once, each machine asking its own name, never shares a bucket.

Over the limit a response is dropped, except every ``slip``-th one, which
goes out as a tiny truncated (TC) reply: a real client behind a forged
flood still gets through by asking again over TCP, and the victim gets a
packet no larger than the query. ``slip = 0`` drops them all. TCP answers
are never limited (the handshake proves the address).

Buckets are kept for the most recently heard keys, at most ``max_buckets``;
a key forgotten comes back with a full bucket.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import OrderedDict
from collections.abc import Hashable

IPV4_PREFIX = 24
IPV6_PREFIX = 56


class Verdict(enum.Enum):
    SEND = "send"
    DROP = "drop"
    SLIP = "slip"  # send a truncated reply instead


class _Bucket:
    __slots__ = ("tokens", "updated", "over")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated
        self.over = 0  # responses over the limit, for the slip count


def client_network(ip: str) -> tuple[int, int]:
    """(IP version, network number) of the client's /24 or /56."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.version == 4:
        return 4, int(address) >> (32 - IPV4_PREFIX)
    return 6, int(address) >> (128 - IPV6_PREFIX)


class ResponseRateLimit:
    """Token buckets by (client network, key); ``now`` in seconds, any monotonic clock."""

    def __init__(self, rate: float, *, burst: float | None = None, slip: int = 2,
                 max_buckets: int = 16384) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self.slip = slip
        self.max_buckets = max_buckets
        self._buckets: OrderedDict[tuple[tuple[int, int], Hashable], _Bucket] = OrderedDict()

    def check(self, client_ip: str, key: Hashable, now: float) -> Verdict:
        """May a response with ``key`` go to ``client_ip`` now? Takes a token if so."""
        bucket_key = (client_network(client_ip), key)
        bucket = self._buckets.get(bucket_key)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            self._buckets[bucket_key] = bucket
            if len(self._buckets) > self.max_buckets:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(bucket_key)
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return Verdict.SEND
        bucket.over += 1
        if self.slip and bucket.over % self.slip == 0:
            return Verdict.SLIP
        return Verdict.DROP

    def __len__(self) -> int:
        return len(self._buckets)
