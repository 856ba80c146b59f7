"""Packets as clients really send them, captured in lab namespaces, and the
helpers that write hand-made ones as hex."""

from __future__ import annotations

ZEROS = "00"


def header(op: str = "01", xid: str = "1d2c3b4a", chaddr: str = "525400123456",
           hlen: str = "06", flags: str = "0000", ciaddr: str = "00000000",
           giaddr: str = "00000000", sname: str = "", file: str = "") -> str:
    """The 236-byte fixed header and the magic cookie, as hex."""
    return (op + "01" + hlen + "00" + xid + "0000" + flags + ciaddr + "00000000" + "00000000"
            + giaddr + chaddr.ljust(32, "0") + sname.ljust(128, "0") + file.ljust(256, "0")
            + "63825363")


def fixture(hexstr: str) -> bytes:
    return bytes.fromhex(hexstr.replace(" ", ""))


# --- real and hand-made packets ---------------------------------------------

def captured(head: str, options: str) -> bytes:
    """A packet seen on the wire: op..chaddr (44 bytes), empty sname and file,
    cookie, options."""
    return fixture(head + "00" * 192 + "63825363" + options)


# busybox udhcpc 1.35 DISCOVER, captured in a lab namespace. Options: type 1,
# max size 576, PRL 1 3 6 12 15 28 42, vendor class "udhcp 1.35.0", client id
# 01:02:ab:23:7e:00:01, END, 20 bytes of padding.
UDHCPC_DISCOVER = captured(
    "01010600 a0a2960f 0000 0000 00000000 00000000 00000000 00000000"
    " 02ab237e0001 00000000000000000000",
    "350101 39020240 37070103060c0f1c2a 3c0c756468637020312e33352e30"
    " 3d070102ab237e0001 ff" + "00" * 20)

# ISC dhclient 4.4 DISCOVER, captured: secs 4, type 1, host name "vm", PRL of
# 13 codes, no client id.
DHCLIENT_DISCOVER = captured(
    "01010600 f9cd540a 0004 0000 00000000 00000000 00000000 00000000"
    " 02abff6f0001 00000000000000000000",
    "350101 0c02766d 370d011c02030f06770c2c2f1a792a ff" + "00" * 37)

# iPXE (QEMU's e1000 option ROM under SeaBIOS) DISCOVER, captured: max size
# 1472, arch 0, NDI 1.2.1, vendor class "PXEClient:Arch:00000:UNDI:002001",
# user class "iPXE", PRL of 23 codes, option 175 (iPXE features), client id,
# UUID (97), END with no padding.
IPXE_DISCOVER = captured(
    "01010600 c0e5466d 0004 0000 00000000 00000000 00000000 00000000"
    " 525400123456 00000000000000000000",
    "350101 390205c0 5d020000 5e03010201"
    " 3c20505845436c69656e743a417263683a30303030303a554e44493a303032303031"
    " 4d0469505845"
    " 3717010306070c0f111a2b3c4243778081828384858687afcb"
    " af30b105018086100eeb030100001701012201011301011101012701011901012901011001022101"
    "01150101180101120101"
    " 3d0701525400123456 61110000000000000000000000000000000000 ff")

# EDK2 (OVMF) PXE DISCOVER, captured: broadcast flag, max size 1472, PRL of
# 35 codes, UUID, NDI 3.0, arch 7, vendor class "PXEClient:Arch:00007:UNDI:003000".
EDK2_DISCOVER = captured(
    "01010600 b429e558 0000 8000 00000000 00000000 00000000 00000000"
    " 525400123457 00000000000000000000",
    "350101 390205c0"
    " 37230102030405060c0d0f111216171c28292a2b3233363a3b3c4243618081828384858687"
    " 61110000000000000000000000000000000000 5e03010300 5d020007"
    " 3c20505845436c69656e743a417263683a30303030373a554e44493a303033303030 ff")

