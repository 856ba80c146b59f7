"""The transfer machine with a fake clock: loss, duplicates, reordering, rollover."""

from __future__ import annotations

import gc
import hashlib
import weakref

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from astralboot.services.tftpd.options import Negotiated
from astralboot.services.tftpd.packets import (Ack, Data, Error, TftpCode, OptionAck, decode,
                                               encode)
from astralboot.services.tftpd.transfer import State, Transfer

PEER = ("192.0.2.10", 40000)
STRANGER = ("192.0.2.11", 40001)


def content(size: int) -> bytes:
    # Distinct bytes per block, so a block sent in the wrong place shows.
    seed = hashlib.sha256(str(size).encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def make(data: bytes, *, blksize: int = 512, windowsize: int = 1, timeout: float = 1.0,
         retries: int = 3, oack: tuple[tuple[str, str], ...] = ()) -> Transfer:
    negotiated = Negotiated(blksize=blksize, timeout=timeout, windowsize=windowsize, oack=oack)
    return Transfer(PEER, data, negotiated, retries=retries)


def ack(block: int) -> bytes:
    return encode(Ack(block & 0xFFFF))


def sent(t: Transfer, now: float) -> list:
    """Decoded packets the transfer sends now, all to the peer."""
    out = t.datagrams_to_send(now)
    assert all(addr == PEER for _, addr in out)
    return [decode(d) for d, _ in out]


def data_blocks(packets: list) -> list[int]:
    assert all(isinstance(p, Data) for p in packets), packets
    return [p.block for p in packets]


class Receiver:
    """An RFC 7440 client: keeps what arrives in order, ACKs window ends and gaps."""

    def __init__(self, blksize: int, windowsize: int) -> None:
        self.blksize = blksize
        self.windowsize = windowsize
        self.expected = 1  # absolute
        self.received = bytearray()
        self.done = False
        self.in_window = 0

    def take(self, packet: Data) -> bytes | None:
        """Feed one DATA; returns the ACK to send, if any."""
        if packet.block != self.expected & 0xFFFF:
            self.in_window = 0
            return ack(self.expected - 1)  # a gap: ACK the last block in order
        self.received += packet.payload
        self.expected += 1
        self.in_window += 1
        if len(packet.payload) < self.blksize:
            self.done = True
            return ack(self.expected - 1)
        if self.in_window == self.windowsize:
            self.in_window = 0
            return ack(self.expected - 1)
        return None


def run_to_end(t: Transfer, rx: Receiver, now: float = 0.0, first: list | None = None) -> bytes:
    packets = sent(t, now) if first is None else first
    steps = 0
    while not rx.done:
        steps += 1
        assert steps < 10_000_000
        reply = None
        for p in packets:
            reply = rx.take(p) or reply
        assert reply is not None, "the client has nothing to say"
        t.receive_datagram(reply, PEER, now)
        packets = sent(t, now)
    assert t.state is State.COMPLETE
    assert t.get_timer() is None
    return bytes(rx.received)


# --- starting ----------------------------------------------------------------


def test_no_options_sends_data_1_straight_away() -> None:
    data = content(1000)
    t = make(data)
    assert t.state is State.SENDING
    assert sent(t, 0.0) == [Data(block=1, payload=data[:512])]
    assert t.get_timer() == 1.0


def test_options_send_the_oack_first_then_data_after_ack_0() -> None:
    data = content(1000)
    t = make(data, oack=(("tsize", "1000"),))
    assert sent(t, 0.0) == [OptionAck(options=(("tsize", "1000"),))]
    t.receive_datagram(ack(1), PEER, 0.1)  # not an answer to the OACK
    assert sent(t, 0.1) == []
    t.receive_datagram(ack(0), PEER, 0.2)
    assert sent(t, 0.2) == [Data(block=1, payload=data[:512])]


def test_error_8_in_answer_to_the_oack_ends_quietly() -> None:
    t = make(content(850_528), oack=(("tsize", "850528"),))
    sent(t, 0.0)
    t.receive_datagram(encode(Error(TftpCode.OPTION_REFUSED, "tsize probe")), PEER, 0.01)
    assert sent(t, 0.01) == []  # an error is never answered
    assert t.state is State.ABORTED
    assert t.done
    assert t.peer_error == Error(8, "tsize probe")
    assert t.get_timer() is None
    t.handle_timer(100.0)
    assert sent(t, 100.0) == []


def test_error_during_data_ends_the_transfer() -> None:
    t = make(content(5000))
    sent(t, 0.0)
    t.receive_datagram(encode(Error(0, "disk full")), PEER, 0.1)
    assert t.state is State.ABORTED
    assert sent(t, 0.1) == []


# --- whole transfers ------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 1024, 5000, 8192])
@pytest.mark.parametrize("blksize,windowsize", [(512, 1), (512, 4), (1468, 16), (8, 1)])
def test_whole_file_arrives(size: int, blksize: int, windowsize: int) -> None:
    data = content(size)
    t = make(data, blksize=blksize, windowsize=windowsize)
    assert run_to_end(t, Receiver(blksize, windowsize)) == data
    assert t.blocks == size // blksize + 1


def test_a_file_of_whole_blocks_ends_with_an_empty_block() -> None:
    t = make(content(1024))
    first = sent(t, 0.0)
    t.receive_datagram(ack(1), PEER, 0.0)
    t.receive_datagram(ack(2), PEER, 0.0)  # a stale duplicate of nothing yet: ignored
    last = sent(t, 0.0)
    t.receive_datagram(ack(2), PEER, 0.0)
    assert data_blocks(first) == [1]
    assert [len(p.payload) for p in last] == [512]
    assert sent(t, 0.0) == [Data(block=3, payload=b"")]


def test_rollover_past_block_65535_delivers_a_file_over_32_mb() -> None:
    size = 65_535 * 512 + 70_000  # about 33.6 MB, 65,672 blocks
    data = content(size)
    t = make(data, blksize=512)
    wire_blocks: list[int] = []
    rx = Receiver(512, 1)
    packets = sent(t, 0.0)
    while not rx.done:
        wire_blocks.append(packets[0].block)
        t.receive_datagram(rx.take(packets[0]), PEER, 0.0)  # type: ignore[arg-type]
        packets = sent(t, 0.0)
    assert t.state is State.COMPLETE
    assert bytes(rx.received) == data
    assert wire_blocks[65_533:65_538] == [65_534, 65_535, 0, 1, 2]


def test_rollover_with_a_window_straddling_65535() -> None:
    size = 65_540 * 512
    t = make(content(size), blksize=512, windowsize=8)
    assert run_to_end(t, Receiver(512, 8)) == content(size)


# --- loss -----------------------------------------------------------------------


def test_lost_data_is_sent_again_on_timeout_only() -> None:
    data = content(2000)
    t = make(data)
    assert data_blocks(sent(t, 0.0)) == [1]  # lost on the way
    t.handle_timer(0.5)
    assert sent(t, 0.5) == []  # not yet
    t.handle_timer(1.0)
    assert sent(t, 1.0) == [Data(block=1, payload=data[:512])]
    t.receive_datagram(ack(1), PEER, 1.1)
    assert data_blocks(sent(t, 1.1)) == [2]
    assert t.retransmitted == 1


def test_lost_ack_server_timer_first() -> None:
    data = content(2000)
    t = make(data)
    sent(t, 0.0)
    t.receive_datagram(ack(1), PEER, 0.1)
    assert data_blocks(sent(t, 0.1)) == [2]
    # The client's ACK 2 is lost: our timer sends DATA 2 again ...
    t.handle_timer(1.1)
    assert data_blocks(sent(t, 1.1)) == [2]
    # ... the client ACKs the duplicate, then its own repeat of ACK 2 arrives.
    t.receive_datagram(ack(2), PEER, 1.2)
    assert data_blocks(sent(t, 1.2)) == [3]
    t.receive_datagram(ack(2), PEER, 1.3)
    assert sent(t, 1.3) == []


def test_lost_ack_client_repeats_it_first() -> None:
    data = content(2000)
    t = make(data)
    sent(t, 0.0)
    t.receive_datagram(ack(1), PEER, 0.1)
    sent(t, 0.1)
    t.receive_datagram(ack(2), PEER, 0.9)  # the client's repeat, before our timer
    assert data_blocks(sent(t, 0.9)) == [3]
    assert t.retransmitted == 0


def test_duplicate_ack_never_sends_a_block_twice() -> None:
    """The Sorcerer's Apprentice: a delayed ACK must not double the traffic."""
    t = make(content(5000))
    sent(t, 0.0)
    t.receive_datagram(ack(1), PEER, 0.1)
    assert data_blocks(sent(t, 0.1)) == [2]
    t.receive_datagram(ack(1), PEER, 0.2)  # the same ACK again (delayed, duplicated)
    assert sent(t, 0.2) == []
    t.receive_datagram(ack(2), PEER, 0.3)
    assert data_blocks(sent(t, 0.3)) == [3]
    t.receive_datagram(ack(2), PEER, 0.4)
    t.receive_datagram(ack(1), PEER, 0.4)
    assert sent(t, 0.4) == []
    assert t.ignored == 3


def test_duplicate_ack_of_a_window_never_sends_the_window_twice() -> None:
    t = make(content(512 * 100), windowsize=16)
    assert data_blocks(sent(t, 0.0)) == list(range(1, 17))
    t.receive_datagram(ack(16), PEER, 0.1)
    assert data_blocks(sent(t, 0.1)) == list(range(17, 33))
    t.receive_datagram(ack(16), PEER, 0.1)
    t.receive_datagram(ack(16), PEER, 0.2)
    assert sent(t, 0.2) == []


def test_ack_for_a_block_not_yet_sent_is_ignored() -> None:
    t = make(content(5000), windowsize=2)
    sent(t, 0.0)
    t.receive_datagram(ack(7), PEER, 0.1)
    assert sent(t, 0.1) == []
    t.receive_datagram(ack(2), PEER, 0.2)
    assert data_blocks(sent(t, 0.2)) == [3, 4]


def test_partial_ack_restarts_the_window_after_the_last_block_in_order() -> None:
    """A reordered window: 1 2 4 3 arrive, the client ACKs 2 at the gap."""
    data = content(512 * 20)
    t = make(data, windowsize=4)
    window = sent(t, 0.0)
    assert data_blocks(window) == [1, 2, 3, 4]
    rx = Receiver(512, 4)
    replies = [rx.take(p) for p in (window[0], window[1], window[3], window[2])]
    assert replies[:3] == [None, None, ack(2)]
    t.receive_datagram(ack(2), PEER, 0.1)
    again = sent(t, 0.1)
    assert data_blocks(again) == [3, 4, 5, 6]
    # Block 3 arriving late makes the client ACK 2 once more: nothing is resent.
    t.receive_datagram(ack(2), PEER, 0.1)
    assert sent(t, 0.1) == []
    assert run_to_end(t, rx, 0.2, first=again) == data


def test_reordered_windows_all_the_way() -> None:
    data = content(512 * 64 + 100)
    t = make(data, windowsize=8)
    rx = Receiver(512, 8)
    packets = sent(t, 0.0)
    now = 0.0
    while not rx.done:
        if len(packets) > 2:
            packets[1], packets[2] = packets[2], packets[1]
        reply = None
        for p in packets:
            reply = rx.take(p) or reply
        t.receive_datagram(reply, PEER, now)  # type: ignore[arg-type]
        now += 0.01
        packets = sent(t, now)
    assert bytes(rx.received) == data


def test_a_lost_block_inside_a_window_comes_back_by_timeout_or_partial_ack() -> None:
    data = content(512 * 10)
    t = make(data, windowsize=4)
    window = sent(t, 0.0)
    rx = Receiver(512, 4)
    reply = None
    for p in window[:2]:  # blocks 3 and 4 lost
        reply = rx.take(p) or reply
    assert reply is None  # the client waits for the window's end
    t.handle_timer(1.0)
    resent = sent(t, 1.0)
    assert data_blocks(resent) == [1, 2, 3, 4]  # from the highest ACKed block + 1
    assert run_to_end(t, rx, 1.0, first=resent) == data


# --- timers -------------------------------------------------------------------


def test_retransmission_backs_off_and_gives_up_after_the_retries() -> None:
    t = make(content(5000), timeout=1.0, retries=4)
    now = 0.0
    sent(t, now)
    deadlines = []
    while not t.done:
        when = t.get_timer()
        assert when is not None
        deadlines.append(when - now)
        now = when
        t.handle_timer(now)
        out = t.datagrams_to_send(now)
        if t.done:
            assert [decode(d) for d, _ in out] == [Error(0, "transfer timed out")]
        else:
            assert data_blocks([decode(d) for d, _ in out]) == [1]
    assert deadlines == [1.0, 2.0, 4.0, 4.0, 4.0]  # doubling, capped at 4x
    assert t.state is State.TIMED_OUT
    assert t.get_timer() is None
    assert t.retransmitted == 4


def test_progress_resets_the_backoff() -> None:
    t = make(content(5000), timeout=2.0, retries=3)
    sent(t, 0.0)
    t.handle_timer(2.0)
    sent(t, 2.0)
    assert t.get_timer() == 2.0 + 4.0
    t.receive_datagram(ack(1), PEER, 3.0)
    sent(t, 3.0)
    assert t.get_timer() == 3.0 + 2.0


def test_lost_oack_is_sent_again() -> None:
    t = make(content(100), oack=(("blksize", "1024"),))
    first = sent(t, 0.0)
    t.handle_timer(1.0)
    assert sent(t, 1.0) == first


def test_early_timer_call_does_nothing() -> None:
    t = make(content(100))
    sent(t, 0.0)
    t.handle_timer(0.999)
    assert sent(t, 0.999) == []
    assert t.get_timer() == 1.0


# --- strangers and junk -----------------------------------------------------------


def test_a_packet_from_an_unknown_tid_gets_error_5_and_the_transfer_goes_on() -> None:
    data = content(3000)
    t = make(data)
    sent(t, 0.0)
    t.receive_datagram(ack(1), STRANGER, 0.1)
    out = t.datagrams_to_send(0.1)
    assert [(decode(d), addr) for d, addr in out] == [(Error(5, "unknown transfer ID"), STRANGER)]
    assert t.state is State.SENDING
    assert t.strangers == 1
    t.receive_datagram(ack(1), PEER, 0.2)
    assert data_blocks(sent(t, 0.2)) == [2]


def test_malformed_and_unexpected_packets_from_the_peer_are_ignored() -> None:
    t = make(content(3000))
    sent(t, 0.0)
    for junk in (b"", b"\x00", b"\x00\x09", encode(Data(block=1, payload=b"x")),
                 encode(OptionAck(options=()))):
        t.receive_datagram(junk, PEER, 0.1)
    assert sent(t, 0.1) == []
    assert t.state is State.SENDING
    assert t.malformed == 3 and t.ignored == 2


def test_packets_after_the_end_are_ignored() -> None:
    t = make(content(10))
    sent(t, 0.0)
    t.receive_datagram(ack(1), PEER, 0.1)
    assert t.state is State.COMPLETE
    t.receive_datagram(ack(1), PEER, 0.2)
    assert sent(t, 0.2) == []


# --- properties -------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(window=st.integers(1, 8),
       events=st.lists(st.one_of(st.integers(0, 0xFFFF).map(lambda b: ("ack", b)),
                                 st.binary(max_size=12).map(lambda d: ("raw", d)),
                                 st.just(("timer", 0))), max_size=60))
def test_any_input_never_crashes_and_never_resends_without_a_timer(
        window: int, events: list[tuple[str, object]]) -> None:
    t = make(content(512 * 20 + 7), windowsize=window, retries=100)
    now = 0.0
    sent(t, now)
    for kind, value in events:
        now += 0.1
        acked_before = t.bytes_acked
        if kind == "ack":
            t.receive_datagram(ack(value), PEER, now)  # type: ignore[arg-type]
        elif kind == "raw":
            t.receive_datagram(value, PEER, now)  # type: ignore[arg-type]
        else:
            when = t.get_timer()
            if when is not None:
                now = when
            t.handle_timer(now)
        packets = sent(t, now)
        blocks = [p.block for p in packets if isinstance(p, Data)]
        assert len(blocks) <= window
        if blocks and kind != "timer":
            assert t.bytes_acked > acked_before  # only progress sends (or the timer)
        if blocks:
            # one window, starting after the highest block acknowledged
            assert blocks[0] == t.bytes_acked // 512 + 1
            assert blocks == list(range(blocks[0], blocks[0] + len(blocks)))


@pytest.mark.parametrize("oack", [(), (("tsize", "1000"),)])
def test_a_transfer_is_freed_as_soon_as_it_is_dropped(oack: tuple[tuple[str, str], ...]) -> None:
    # The bytes a transfer sends (a shared netascii copy, say) must go when the
    # server forgets the transfer, not whenever the cycle collector next runs.
    t = make(content(1000), oack=oack)
    for state_change in (ack(0), ack(1), encode(Error(0, "stop"))):
        t.datagrams_to_send(1.0)
        t.receive_datagram(state_change, PEER, 1.1)
    gone = weakref.ref(t)
    enabled = gc.isenabled()
    gc.disable()
    try:
        del t
        assert gone() is None
    finally:
        if enabled:
            gc.enable()
