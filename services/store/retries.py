"""Retried requests: a retried write gets the first reply, never a second change.

A client that hears nothing sends the same request again with the same id
(the Lazy Pirate pattern). The store remembers the reply to each write once
it is durable, and knows every write still waiting for its commit, so a
retry is answered from memory or joins the request already in flight.
"""

from __future__ import annotations

from collections import OrderedDict

from astralboot.common.bus.schema import Reply
from astralboot.common.bus.server import Incoming
from astralboot.common.messages import BootEvent

RECENT_REPLIES = 65536  # answers to writes kept for retried requests

Key = tuple[bytes, int]  # (the peer's routing identity, its request id)


def request_key(incoming: Incoming) -> Key:
    """Whose request this is: a request id means something only with its peer.

    Ids are unique per client, not across clients, so a retry is recognised
    (and answered from memory) only when the same peer sends the same id;
    another peer sending that id is a new request, never a way to read the
    first one's answer.
    """
    return (incoming.envelope[0], incoming.request.request_id)


class Waiting:
    """A request whose reply waits for its batch to be durable."""

    __slots__ = ("key", "request_id", "envelopes", "reply", "publish")

    def __init__(self, key: Key, envelope: list[bytes], reply: Reply | None,
                 publish: BootEvent | None = None) -> None:
        self.key = key
        self.request_id = key[1]
        self.envelopes = [envelope]  # the first request's, then each retry's
        self.reply = reply
        self.publish = publish  # the event to announce once it is durable


class RetryCache:
    """Replies by :data:`Key`: the last ``size`` given to writes, and writes in flight.

    The server looks a request up in :attr:`recent` (answer it with the
    stored body) and then in :attr:`waiting` (add its envelope to the
    one being written) before applying it, and puts each write it applies
    in :attr:`waiting`; both are plain dicts, so that per-request work
    costs no call of its own.
    """

    __slots__ = ("recent", "waiting", "size")

    def __init__(self, size: int = RECENT_REPLIES) -> None:
        self.recent: OrderedDict[Key, bytes] = OrderedDict()  # oldest first
        self.waiting: dict[Key, Waiting] = {}
        self.size = size

    def settle(self, waiting: Waiting, body: bytes, remember: bool) -> None:
        """``waiting`` was answered with ``body``; keep it for retries if ``remember``.

        Only replies that describe durable state are remembered: an
        ``unavailable`` answer must let a retry try again.
        """
        self.waiting.pop(waiting.key, None)
        if remember:
            recent = self.recent
            recent[waiting.key] = body
            if len(recent) > self.size:
                recent.popitem(last=False)
