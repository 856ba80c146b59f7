"""Who watches which machines' boot events: the store's subscription table.

Sans-IO: peers (ZeroMQ routing identities on the events socket) subscribe
to MAC prefixes; the table decides whether to take a subscription, finds
the peers an event goes to, and forgets peers that stopped renewing. Every
dimension is bounded, because any host that reaches a ``tcp://`` events
socket can subscribe:

- topics per subscription (``per_peer``): a subscriber needs one or a few;
- subscribers per peer address (``per_address``): one host cannot open
  thousands of connections to get round the first bound;
- subscribers in all (``total``).

Matching an event costs one dictionary lookup per prefix length in use
(at most 18 for a MAC), however many topics are subscribed.
"""

from __future__ import annotations

from dataclasses import dataclass

from astralboot.common.errors import ErrorCode

from astralboot.services.store.leases import Refusal

MAC_TEXT = 17  # "aa:bb:cc:dd:ee:ff"
_HEX = frozenset("0123456789abcdef")


def valid_topic(topic: str) -> bool:
    """A topic is a prefix of a lower-case MAC ("" is every machine)."""
    if len(topic) > MAC_TEXT:
        return False
    return all((c == ":") if i % 3 == 2 else (c in _HEX) for i, c in enumerate(topic))


@dataclass(slots=True)
class Subscriber:
    address: str
    topics: tuple[str, ...]
    expires: float


class SubscriptionTable:
    def __init__(self, *, lifetime: float, per_peer: int = 16, per_address: int = 32,
                 total: int = 1024) -> None:
        self.lifetime = lifetime
        self.per_peer = per_peer
        self.per_address = per_address
        self.total = total
        self._peers: dict[bytes, Subscriber] = {}
        self._index: dict[str, set[bytes]] = {}  # topic -> peers
        self._lengths: dict[int, int] = {}  # topic length -> topics of that length
        self._per_address: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._peers)

    @property
    def topics(self) -> int:
        return len(self._index)

    def subscribe(self, peer: bytes, address: str, topics: tuple[str, ...], now: float) -> None:
        """Take (or renew, or with no topics end) ``peer``'s subscription; Refusal if not."""
        if not topics:
            self.drop(peer)
            return
        if len(topics) > self.per_peer:
            raise Refusal(ErrorCode.BAD_REQUEST,
                          f"{len(topics)} topics; a subscriber may have {self.per_peer}")
        for topic in topics:
            if not valid_topic(topic):
                raise Refusal(ErrorCode.BAD_REQUEST,
                              f"topic {topic[:40]!r} is not a prefix of a lower-case MAC")
        current = self._peers.get(peer)
        if current is None:
            if len(self._peers) >= self.total:
                raise Refusal(ErrorCode.UNAVAILABLE,
                              f"the store already has {self.total} event subscribers")
            if self._per_address.get(address, 0) >= self.per_address:
                raise Refusal(ErrorCode.UNAVAILABLE,
                              f"{address or 'this host'} already has {self.per_address} "
                              "event subscribers")
            self._per_address[address] = self._per_address.get(address, 0) + 1
            current = self._peers[peer] = Subscriber(address, (), now)
        if set(current.topics) != set(topics):
            self._unindex(peer, current.topics)
            current.topics = tuple(dict.fromkeys(topics))
            for topic in current.topics:
                peers = self._index.get(topic)
                if peers is None:
                    peers = self._index[topic] = set()
                    self._lengths[len(topic)] = self._lengths.get(len(topic), 0) + 1
                peers.add(peer)
        current.expires = now + self.lifetime

    def drop(self, peer: bytes) -> None:
        current = self._peers.pop(peer, None)
        if current is None:
            return
        self._unindex(peer, current.topics)
        left = self._per_address[current.address] - 1
        if left:
            self._per_address[current.address] = left
        else:
            del self._per_address[current.address]

    def _unindex(self, peer: bytes, topics: tuple[str, ...]) -> None:
        for topic in topics:
            peers = self._index.get(topic)
            if peers is None:
                continue
            peers.discard(peer)
            if not peers:
                del self._index[topic]
                n = self._lengths[len(topic)] - 1
                if n:
                    self._lengths[len(topic)] = n
                else:
                    del self._lengths[len(topic)]

    def expire(self, now: float) -> int:
        """Forget subscribers that stopped renewing; how many went."""
        gone = [peer for peer, s in self._peers.items() if s.expires <= now]
        for peer in gone:
            self.drop(peer)
        return len(gone)

    def match(self, mac: str) -> set[bytes]:
        """The peers an event about ``mac`` goes to (empty: nobody is watching)."""
        if not self._index:
            return set()
        found: set[bytes] = set()
        for length in self._lengths:
            peers = self._index.get(mac[:length])
            if peers:
                found |= peers
        return found
