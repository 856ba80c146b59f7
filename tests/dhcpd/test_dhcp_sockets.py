"""The IP/UDP datagram written for link-layer unicast, and start-up errors."""

from __future__ import annotations

import socket
import struct
import sys

import pytest
from astralboot.common.errors import StartupError
from astralboot.common.cli.demo.netns import Lab
from astralboot.services.dhcpd.sockets import ip_udp, open_udp
from hypothesis import given
from hypothesis import strategies as st

SRC, DST = socket.inet_aton("192.0.2.1"), socket.inet_aton("192.0.2.100")


def ones_sum(data: bytes) -> int:
    """RFC 1071 sum in network order, computed the slow, obvious way."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


@given(st.binary(min_size=0, max_size=600), st.integers(0, 0xFFFF))
def test_datagram_headers_and_checksums_verify(payload: bytes, ident: int) -> None:
    packet = ip_udp(payload, SRC, DST, 67, 68, ident)
    header, udp = packet[:20], packet[20:]
    assert header[0] == 0x45 and header[9] == socket.IPPROTO_UDP and header[8] == 64
    assert struct.unpack("!H", header[2:4])[0] == len(packet)
    assert header[12:16] == SRC and header[16:20] == DST
    assert ones_sum(header) == 0xFFFF  # a correct header sums to all ones
    sport, dport, length, checksum = struct.unpack("!HHHH", udp[:8])
    assert (sport, dport, length) == (67, 68, 8 + len(payload))
    assert checksum != 0
    pseudo = SRC + DST + bytes((0, socket.IPPROTO_UDP)) + struct.pack("!H", length)
    assert ones_sum(pseudo + udp) == 0xFFFF
    assert udp[8:] == payload


def test_missing_interface_is_a_clear_startup_error() -> None:
    with pytest.raises(StartupError, match="no interface 'nosuch0' on this host"):
        open_udp("nosuch0", 6767)


def test_no_interface_configured_is_a_clear_startup_error() -> None:
    with pytest.raises(StartupError, match="no interface is configured"):
        open_udp("", 6767)


def test_port_in_use_is_a_clear_startup_error() -> None:
    first = open_udp("lo", 0)
    port = first.getsockname()[1]
    try:
        with pytest.raises(StartupError, match=f"UDP port {port} on lo is already in use"):
            open_udp("lo", port)
    finally:
        first.close()


@pytest.mark.netns
def test_missing_privilege_is_a_clear_startup_error(lab: Lab) -> None:
    code = ("from astralboot.common.errors import StartupError\n"
            "from astralboot.services.dhcpd.sockets import open_udp\n"
            "try:\n    open_udp('br0', 67)\nexcept StartupError as e:\n    print(e)\n")
    proc = lab.server.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-c", code])
    assert "dhcpd: cannot start: binding UDP port 67 needs root or CAP_NET_BIND_SERVICE" \
        in proc.stdout
