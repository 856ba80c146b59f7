"""One read transfer as a sans-IO state machine (the aioquic shape).

The server feeds it datagrams with :meth:`Transfer.receive_datagram`, sends
what :meth:`Transfer.datagrams_to_send` returns, and calls
:meth:`Transfer.handle_timer` when :meth:`Transfer.get_timer` says so. The
clock is always a parameter, so loss, retransmission and give-up are tested
without sleeping.

Block numbers are kept absolute (1, 2, ... past 65535) and only wrapped to
16 bits on the wire, so files over 32 MB at blksize 512 arrive whole. A
window (RFC 7440; 1 without the option) goes out when the previous one is
acknowledged, from the block after the highest acknowledged one, so a
partial ACK (a block lost or reordered) restarts the window there. A
duplicate or stale ACK never sends anything: only the timer retransmits
(the Sorcerer's Apprentice fix of RFC 1123).
"""

from __future__ import annotations

import enum
from typing import Callable

from astralboot.services.tftpd.options import Negotiated
from astralboot.services.tftpd.packets import (MAX_BLOCK, Ack, Error, TftpCode, OptionAck, Packet, TftpProtocolError,
                      ack_block, data_packet, decode, encode, encode_error)

Address = tuple[str, int]
Datagram = tuple[bytes, Address]

BACKOFF_CAP = 4  # the retransmission interval doubles up to this many times the base

UNKNOWN_TID = encode_error(TftpCode.UNKNOWN_TID, "unknown transfer ID")
TIMED_OUT = encode_error(TftpCode.NOT_DEFINED, "transfer timed out")


class State(enum.Enum):
    OPTIONS = "options"  # OACK sent, waiting for ACK 0
    SENDING = "sending"
    COMPLETE = "complete"  # the last block is acknowledged
    ABORTED = "aborted"  # the client sent an ERROR (for a UEFI tsize probe: 8)
    TIMED_OUT = "timed_out"


ACTIVE = frozenset({State.OPTIONS, State.SENDING})


class Transfer:
    """Sends ``content`` to ``peer`` with the negotiated parameters."""

    def __init__(self, peer: Address, content: bytes | memoryview, negotiated: Negotiated, *,
                 retries: int) -> None:
        self.peer = peer
        self.blksize = negotiated.blksize
        self.windowsize = negotiated.windowsize
        self.size = len(content)
        self.blocks = self.size // self.blksize + 1  # the last one is short, maybe empty
        self.peer_error: Error | None = None
        # counters, read by the server for its stats
        self.packets_sent = 0
        self.retransmitted = 0
        self.ignored = 0  # duplicate/stale ACKs and unexpected packets
        self.malformed = 0
        self.strangers = 0  # datagrams from another address (ERROR 5)

        self._content = memoryview(content).cast("B")
        self._base_timeout = negotiated.timeout
        self._interval = negotiated.timeout  # grows with each retransmission
        self._retries = retries
        self._tries = 0
        self._acked = 0  # absolute number of the highest acknowledged block
        self._sent = 0  # absolute number of the highest block sent
        self._outbox: list[Datagram] = []
        self._due = True  # the OACK or the window must go out
        self._deadline: float | None = None
        self._heard = False
        self._oack = encode(OptionAck(options=negotiated.oack)) if negotiated.oack else b""
        self.done = False
        self._enter(State.OPTIONS if negotiated.oack else State.SENDING)

    # -- the aioquic-shaped API ------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        if addr != self.peer:
            self.strangers += 1
            self._outbox.append((UNKNOWN_TID, addr))  # and the transfer goes on
            return
        block = ack_block(data)
        if block is not None:
            self._on_ack(self, block, now)
            return
        try:
            packet = decode(data)
        except TftpProtocolError:
            self.malformed += 1
            return
        self.receive_packet(packet, addr, now)

    def receive_packet(self, packet: Packet, addr: Address, now: float) -> None:
        """Like :meth:`receive_datagram`, for a caller that decoded it already."""
        if addr != self.peer:
            self.strangers += 1
            self._outbox.append((UNKNOWN_TID, addr))
        elif type(packet) is Ack:
            self._on_ack(self, packet.block, now)
        elif type(packet) is Error:
            self._on_error(self, packet, now)
        else:
            self.ignored += 1  # DATA, OACK, requests: not for a sender

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        out = self._outbox
        self._outbox = []
        if self._due:
            self._due = False
            if self.state is State.SENDING:
                self._window(out)
            else:
                out.append((self._oack, self.peer))
                self.packets_sent += 1
            self._deadline = now + self._interval
        return out

    def get_timer(self) -> float | None:
        return self._deadline

    def handle_timer(self, now: float) -> None:
        if self._deadline is None or now < self._deadline:
            return
        if self._tries >= self._retries:
            self._enter(State.TIMED_OUT)
            self._outbox.append((TIMED_OUT, self.peer))
            return
        self._tries += 1
        self._interval = self._base_timeout * min(1 << self._tries, BACKOFF_CAP)
        if self.state is State.SENDING:
            self.retransmitted += min(self._acked + self.windowsize, self.blocks) - self._acked
        else:
            self.retransmitted += 1
        self._due = True
        self._deadline = None  # set again when the retransmission goes out

    # -- state -------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """The client has acknowledged something: this is no longer a fresh RRQ."""
        return self._heard

    @property
    def bytes_acked(self) -> int:
        return min(self._acked * self.blksize, self.size)

    # -- internals ------------------------------------------------------------

    def _enter(self, state: State) -> None:
        self.state = state
        # Plain functions, not bound methods: a bound method kept on the
        # instance is a reference cycle, which would leave every finished
        # transfer (and the file bytes it holds) to the cyclic collector.
        self._on_ack = _ON_ACK[state]
        self._on_error = _ON_ERROR[state]
        if state not in ACTIVE:
            self.done = True
            self._deadline = None
            self._due = False

    def _window(self, out: list[Datagram]) -> None:
        first = self._acked + 1
        last = min(self._acked + self.windowsize, self.blocks)
        content, bs, peer = self._content, self.blksize, self.peer
        offset = (first - 1) * bs
        for block in range(first, last + 1):
            out.append((data_packet(block, content[offset:offset + bs]), peer))
            offset += bs
        self.packets_sent += last - first + 1
        if last > self._sent:
            self._sent = last

    def _ack_of_oack(self, block: int, now: float) -> None:
        if block != 0:
            self.ignored += 1
            return
        self._heard = True
        self._tries = 0
        self._interval = self._base_timeout
        self._enter(State.SENDING)
        self._due = True

    def _ack_of_data(self, block: int, now: float) -> None:
        advance = (block - self._acked) & MAX_BLOCK
        if advance == 0 or advance > self._sent - self._acked:
            self.ignored += 1  # a duplicate or stale ACK: never a second send
            return
        self._acked += advance
        if self._tries:
            self._tries = 0
            self._interval = self._base_timeout
        self._heard = True
        if self._acked >= self.blocks:
            self._enter(State.COMPLETE)
        else:
            self._due = True

    def _peer_error(self, error: Error, now: float) -> None:
        self.peer_error = error
        self._enter(State.ABORTED)  # quietly: an error is never answered

    def _late(self, packet: object, now: float) -> None:
        pass  # the transfer is over; the server forgets it


# What each packet means in each state: (state, packet) → handler.
_ON_ACK: dict[State, Callable[..., None]] = {
    State.OPTIONS: Transfer._ack_of_oack,
    State.SENDING: Transfer._ack_of_data,
    State.COMPLETE: Transfer._late,
    State.ABORTED: Transfer._late,
    State.TIMED_OUT: Transfer._late,
}
_ON_ERROR: dict[State, Callable[..., None]] = {
    State.OPTIONS: Transfer._peer_error,
    State.SENDING: Transfer._peer_error,
    State.COMPLETE: Transfer._late,
    State.ABORTED: Transfer._late,
    State.TIMED_OUT: Transfer._late,
}
