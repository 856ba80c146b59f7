"""DHCP protocol constants in one place (RFC 2131, 2132, 3396, 4578, 3046).

Plain ints rather than enums on purpose: they are compared on every packet,
and an ``IntEnum`` attribute lookup costs more than the comparison.
"""

from __future__ import annotations

# --- ports and the fixed header ---------------------------------------------

SERVER_PORT = 67
CLIENT_PORT = 68
PXE_PORT = 4011  # PXE boot server discovery / iPXE's ProxyDHCP request

BOOTREQUEST = 1
BOOTREPLY = 2

HTYPE_ETHERNET = 1
MAX_HLEN = 16  # chaddr is 16 bytes

MAGIC_COOKIE = b"\x63\x82\x53\x63"
HEADER_SIZE = 236  # op .. file, without the cookie
OPTIONS_START = HEADER_SIZE + len(MAGIC_COOKIE)  # 240
SNAME_OFFSET = 44
SNAME_SIZE = 64
FILE_OFFSET = 108
FILE_SIZE = 128

MIN_PACKET = 300  # RFC 1542 section 3.4: some relays drop shorter BOOTP packets
DEFAULT_MAX_MESSAGE = 576  # RFC 2131: every client accepts this (IP datagram)
IP_UDP_OVERHEAD = 28
MAX_MESSAGE = 1500 - IP_UDP_OVERHEAD  # we never send more than one Ethernet frame

FLAG_BROADCAST = 0x8000

ZERO_IP = "0.0.0.0"
BROADCAST_IP = "255.255.255.255"

# --- message types (option 53) ----------------------------------------------

DHCPDISCOVER = 1
DHCPOFFER = 2
DHCPREQUEST = 3
DHCPDECLINE = 4
DHCPACK = 5
DHCPNAK = 6
DHCPRELEASE = 7
DHCPINFORM = 8

MESSAGE_TYPE_NAMES = {
    DHCPDISCOVER: "DISCOVER", DHCPOFFER: "OFFER", DHCPREQUEST: "REQUEST",
    DHCPDECLINE: "DECLINE", DHCPACK: "ACK", DHCPNAK: "NAK", DHCPRELEASE: "RELEASE",
    DHCPINFORM: "INFORM",
}

# --- option codes -----------------------------------------------------------

OPT_PAD = 0
OPT_SUBNET_MASK = 1
OPT_ROUTER = 3
OPT_DNS = 6
OPT_HOST_NAME = 12
OPT_DOMAIN_NAME = 15
OPT_BROADCAST = 28
OPT_VENDOR_SPECIFIC = 43
OPT_REQUESTED_IP = 50
OPT_LEASE_TIME = 51
OPT_OVERLOAD = 52
OPT_MESSAGE_TYPE = 53
OPT_SERVER_ID = 54
OPT_PARAMETER_LIST = 55
OPT_MESSAGE = 56
OPT_MAX_MESSAGE_SIZE = 57
OPT_RENEWAL_TIME = 58  # T1
OPT_REBINDING_TIME = 59  # T2
OPT_VENDOR_CLASS = 60
OPT_CLIENT_ID = 61
OPT_TFTP_SERVER = 66
OPT_BOOTFILE = 67
OPT_USER_CLASS = 77
OPT_RELAY_AGENT = 82
OPT_CLIENT_ARCH = 93
OPT_CLIENT_NDI = 94
OPT_CLIENT_UUID = 97
OPT_IPXE = 175  # iPXE's encapsulated options; present only when iPXE asks
OPT_END = 255

# Option 52 values: which header fields hold more options.
OVERLOAD_FILE = 1
OVERLOAD_SNAME = 2
OVERLOAD_BOTH = 3

# --- client system architecture (option 93, RFC 4578 / IANA registry) --------

ARCH_BIOS = 0
ARCH_EFI_IA32 = 6
ARCH_EFI_X64 = 7
ARCH_EFI_BC = 9  # "EFI byte code", what many x64 firmwares actually send
ARCH_EFI_ARM32 = 10
ARCH_EFI_ARM64 = 11
ARCH_EFI_X64_HTTP = 16
ARCH_EFI_ARM64_HTTP = 19

VENDOR_PXE = b"PXEClient"
VENDOR_HTTP = b"HTTPClient"
