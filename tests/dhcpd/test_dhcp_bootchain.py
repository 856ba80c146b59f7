"""The boot chain: crafted DISCOVERs from each kind of firmware, through the policy,
and the proxyDHCP policy that hands out boot information only."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from typing import Any

import pytest
from astralboot.common.messages import LeaseCommit, LeaseOffer
from astralboot.services.dhcpd import constants as c
from astralboot.services.dhcpd.bootchain import BinaryCatalogue, BootChain
from astralboot.services.dhcpd.client_messages import read_client_message
from astralboot.services.dhcpd.packet import Packet, decode
from astralboot.services.dhcpd.policy import BROADCAST, Arrival, DhcpPolicy
from astralboot.services.dhcpd.proxy import ProxyPolicy
from dhcp_captures import EDK2_DISCOVER, IPXE_DISCOVER
from dhcptest import SERVER, InProcessStore, client_message, make_config, message_type

MAC = "52:54:00:12:34:56"
URL = "http://192.0.2.1"


def offer_for(msg_bytes: bytes | None = None, *, binaries: set[str] | None = None,
              machine: dict[str, str] | None = None, public_url: str = URL,
              **kw: Any) -> Packet:
    """The OFFER the authoritative policy makes to a crafted DISCOVER
    (``machine``: the fields an operator set on the client's machine)."""
    config = make_config()
    store = InProcessStore(config, binaries=binaries)
    if machine is not None:
        assert store.machine(MAC, **machine) is not None
    catalogue = BinaryCatalogue()
    policy = DhcpPolicy(config=config, store=store, boot=BootChain(public_url, catalogue),
                        report=lambda *e: None, stats=Counter())
    msg = read_client_message(msg_bytes) if msg_bytes else client_message(c.DHCPDISCOVER, **kw)

    async def run() -> Packet:
        await catalogue.refresh(store.request)
        out = await policy.handle(msg)
        assert out is not None and out.message_type == c.DHCPOFFER
        return decode(out.payload)

    return asyncio.run(run())


def boot_file(p: Packet) -> str | None:
    """What the client will load, after checking the three places agree."""
    name = p.options.get(c.OPT_BOOTFILE)
    if name is None:
        assert p.file == b"" and c.OPT_TFTP_SERVER not in p.options
        assert p.siaddr == "0.0.0.0"
        return None
    if len(name) <= 128:
        assert p.file == name
    assert p.siaddr == SERVER
    assert p.options[c.OPT_TFTP_SERVER] == SERVER.encode()
    return name.decode()


PXE_X64 = b"PXEClient:Arch:00007:UNDI:003016"

FIRMWARE = {
    # SeaBIOS with a plain PXE ROM: arch 0, no user class.
    "bios pxe": ({"arch": 0, "vendor": b"PXEClient:Arch:00000:UNDI:002001"}, "undionly.kpxe"),
    # UEFI x64 (arch 7) and the "EFI BC" code (9) many x64 firmwares send.
    "uefi x64 (7)": ({"arch": 7, "vendor": PXE_X64}, "snponly.efi"),
    "uefi x64 (9)": ({"arch": 9, "vendor": b"PXEClient:Arch:00009:UNDI:003016"}, "snponly.efi"),
    # No option 93, but the architecture in the vendor class.
    "uefi x64 from vendor class only": ({"vendor": PXE_X64}, "snponly.efi"),
    # A PXE client with neither: treated as BIOS.
    "pxe without arch": ({"vendor": b"PXEClient"}, "undionly.kpxe"),
    # ARM64 UEFI with the SNP build present.
    "uefi arm64 (11)": ({"arch": 11, "vendor": b"PXEClient:Arch:00011:UNDI:003000"},
                        "snponly-arm64.efi"),
    # UEFI HTTP boot: a URL to the iPXE binary that httpd serves from tftp/.
    "uefi http boot x64 (16)": ({"arch": 16, "vendor": b"HTTPClient:Arch:00016:UNDI:003001"},
                                URL + "/tftp/snponly.efi"),
    "uefi http boot arm64 (19)": ({"arch": 19, "vendor": b"HTTPClient:Arch:00019:UNDI:003001"},
                                  URL + "/tftp/snponly-arm64.efi"),
    # iPXE already running: the boot script, by each of its three signs.
    "ipxe user class": ({"arch": 0, "vendor": PXE_X64, "user_class": b"iPXE"},
                        URL + "/choose"),
    "ipxe user class (rfc 3004 form)": ({"arch": 7, "user_class": b"\x04iPXE"}, URL + "/choose"),
    "skinny user class (the original's iPXE)": ({"arch": 0, "user_class": b"skinny"},
                                                URL + "/choose"),
    "ipxe option 175 only": ({"arch": 7, "extra": {c.OPT_IPXE: b"\xb1\x05\x01\x80\x86\x10\x0e"}},
                             URL + "/choose"),
    # An OS's own DHCP client: an address, no boot file.
    "plain dhcp client": ({"vendor": b"udhcp 1.35.0"}, None),
}


@pytest.mark.parametrize("kw,expected", FIRMWARE.values(), ids=list(FIRMWARE))
def test_firmware_gets_its_boot_file(kw: dict[str, Any], expected: str | None) -> None:
    binaries = {"snponly.efi", "ipxe.efi", "snponly-arm64.efi"}
    assert boot_file(offer_for(binaries=binaries, **kw)) == expected


def test_http_boot_echoes_vendor_class() -> None:
    p = offer_for(arch=16, vendor=b"HTTPClient:Arch:00016:UNDI:003001")
    assert p.options[c.OPT_VENDOR_CLASS] == b"HTTPClient"


def test_pxe_offer_does_not_claim_pxe_vendor_class() -> None:
    # Authoritative offers look like dnsmasq's: no option 60, so EDK2 takes
    # the file as is instead of starting boot server discovery.
    p = offer_for(arch=7, vendor=PXE_X64)
    assert c.OPT_VENDOR_CLASS not in p.options and c.OPT_VENDOR_SPECIFIC not in p.options


def test_captured_edk2_discover_gets_snponly() -> None:
    assert boot_file(offer_for(EDK2_DISCOVER)) == "snponly.efi"


def test_captured_ipxe_discover_gets_the_menu() -> None:
    assert boot_file(offer_for(IPXE_DISCOVER)) == URL + "/choose"


def test_ipxe_of_a_machine_with_an_os_goes_straight_to_its_script() -> None:
    p = offer_for(IPXE_DISCOVER, machine={"name": "node7", "os": "debian"})
    assert boot_file(p) == f"{URL}/boot/debian/{MAC}"
    assert p.options[c.OPT_HOST_NAME] == b"node7"


def test_uefi_falls_back_to_ipxe_efi_without_snponly() -> None:
    assert boot_file(offer_for(arch=7, binaries={"ipxe.efi"})) == "ipxe.efi"
    assert boot_file(offer_for(arch=16, vendor=b"HTTPClient", binaries={"ipxe.efi"})) == \
        URL + "/tftp/ipxe.efi"


def test_arm64_uses_whichever_arm64_binary_exists() -> None:
    assert boot_file(offer_for(arch=11, binaries={"ipxe-arm64.efi"})) == "ipxe-arm64.efi"


def test_arm64_without_an_ipxe_binary_gets_debians_signed_shim() -> None:
    """Debian ships no iPXE for ARM64: by default ([uefi] arm64_loader = "auto")
    such a machine boots shim and GRUB from the ARM64 netboot package."""
    p = offer_for(arch=11, binaries={"snponly.efi"})
    assert p.yiaddr != "0.0.0.0"
    assert boot_file(p) == "debian-installer/arm64/bootnetaa64.efi"
    assert boot_file(offer_for(arch=11, binaries={"snponly.efi"},
                               machine={"loader": "ipxe"})) is None  # asked for, not there


# --- the loader: iPXE, or Debian's signed shim for Secure Boot ------------------

def offer_with(loader_default: str, class_loaders: dict[str, str] | None = None,
               **kw: Any) -> Packet:
    """As offer_for, with ``[uefi] loader`` set to ``loader_default``."""
    config = make_config()
    store = InProcessStore(config, binaries={"snponly.efi"})
    machine = kw.pop("machine", None)
    if machine is not None:
        assert store.machine(MAC, **machine) is not None
    catalogue = BinaryCatalogue()
    policy = DhcpPolicy(config=config, store=store,
                        boot=BootChain(URL, catalogue, loader=loader_default,
                                       class_loaders=class_loaders),
                        report=lambda *e: None, stats=Counter())

    async def run() -> Packet:
        await catalogue.refresh(store.request)
        out = await policy.handle(client_message(c.DHCPDISCOVER, **kw))
        assert out is not None and out.message_type == c.DHCPOFFER
        return decode(out.payload)

    return asyncio.run(run())


@pytest.mark.parametrize("arch", [7, 9])
def test_a_machine_set_to_shim_gets_shim_in_the_file_field(arch: int) -> None:
    # shim takes the folder it loads grubx64.efi from out of the BOOTP file field.
    p = offer_for(arch=arch, vendor=PXE_X64, binaries={"snponly.efi"},
                  machine={"loader": "shim"})
    assert boot_file(p) == "debian-installer/amd64/bootnetx64.efi"
    assert p.file == b"debian-installer/amd64/bootnetx64.efi"


def test_the_configured_default_loader_and_a_machines_own_choice() -> None:
    assert boot_file(offer_with("shim", arch=7, vendor=PXE_X64)) == \
        "debian-installer/amd64/bootnetx64.efi"
    assert boot_file(offer_with("shim", arch=7, vendor=PXE_X64,
                                machine={"loader": "ipxe"})) == "snponly.efi"
    # BIOS machines have no Secure Boot: the loader never changes theirs.
    assert boot_file(offer_with("shim", arch=0, machine={"loader": "shim"})) == "undionly.kpxe"


def test_a_machine_class_can_name_the_loader_between_the_machine_and_the_default() -> None:
    secure = {"secure": "shim"}
    classed = {"os": "flatcar", "machine_class": "secure"}
    assert boot_file(offer_with("ipxe", secure, arch=7, vendor=PXE_X64, machine=classed)) == \
        "debian-installer/amd64/bootnetx64.efi"
    assert boot_file(offer_with("ipxe", secure, arch=7, vendor=PXE_X64,
                                machine={**classed, "loader": "ipxe"})) == "snponly.efi"
    assert boot_file(offer_with("ipxe", secure, arch=7, vendor=PXE_X64,
                                machine={"os": "flatcar", "machine_class": "worker"})) == \
        "snponly.efi"


def test_uefi_http_boot_of_a_shim_machine_is_not_answered_so_the_firmware_tries_pxe() -> None:
    p = offer_for(arch=16, vendor=b"HTTPClient:Arch:00016:UNDI:003001",
                  binaries={"snponly.efi"}, machine={"loader": "shim"})
    assert p.yiaddr != "0.0.0.0" and boot_file(p) is None


def test_ipxe_on_a_shim_machine_still_gets_its_script() -> None:
    # (a machine without Secure Boot set to shim by mistake can still run iPXE)
    p = offer_for(user_class=b"iPXE", arch=7, machine={"loader": "shim", "os": "debian"})
    assert boot_file(p) == f"{URL}/boot/debian/{MAC}"


def test_url_longer_than_the_file_field_travels_in_option_67_only() -> None:
    long_url = "http://boot.example/" + "x" * 120
    p = offer_for(user_class=b"iPXE", arch=0, public_url=long_url)
    assert p.options[c.OPT_BOOTFILE] == (long_url + "/choose").encode()
    assert p.file == b""


def test_catalogue_before_the_store_answers() -> None:
    catalogue = BinaryCatalogue()
    assert catalogue.pick(("snponly.efi", "ipxe.efi"), required=True) == "snponly.efi"
    catalogue.present.update({"snponly.efi": False, "ipxe.efi": False})
    assert catalogue.pick(("snponly.efi", "ipxe.efi"), required=True) == "snponly.efi"
    assert catalogue.pick(("snponly-arm64.efi",), required=False) == "snponly-arm64.efi"
    catalogue.present["snponly-arm64.efi"] = False
    assert catalogue.pick(("snponly-arm64.efi",), required=False) is None


def test_catalogue_left_unknown_when_the_store_fails() -> None:
    store = InProcessStore(make_config(), fail={"content.stat": "unavailable"})
    catalogue = BinaryCatalogue()
    asyncio.run(catalogue.refresh(store.request))
    assert catalogue.present == {}


# --- proxyDHCP --------------------------------------------------------------------

class Proxy:
    def __init__(self) -> None:
        self.config = make_config(proxy=True)
        self.store = InProcessStore(self.config)
        self.stats: Counter[str] = Counter()
        self.events: list[tuple[Any, ...]] = []
        catalogue = BinaryCatalogue(present={"snponly.efi": True})
        self.policy = ProxyPolicy(config=self.config, store=self.store,
                                  boot=BootChain(URL, catalogue),
                                  report=lambda *e: self.events.append(e), stats=self.stats)

    def send(self, data: bytes | None = None, arrival: Arrival = BROADCAST,
             mtype: int = c.DHCPDISCOVER, **kw: Any) -> tuple[Packet, Any] | None:
        msg = read_client_message(data) if data else client_message(mtype, **kw)
        out = asyncio.run(self.policy.handle(msg, arrival))
        return None if out is None else (decode(out.payload), out.destination)

    def asked_for_leases(self) -> bool:
        return any(isinstance(m, (LeaseOffer, LeaseCommit)) for m in self.store.calls)


def test_proxy_offer_has_boot_information_and_no_address() -> None:
    proxy = Proxy()
    answer = proxy.send(EDK2_DISCOVER)
    assert answer is not None
    p, dest = answer
    assert message_type(p) == c.DHCPOFFER
    assert p.yiaddr == "0.0.0.0"
    assert boot_file(p) == "snponly.efi"
    assert p.options[c.OPT_VENDOR_CLASS] == b"PXEClient"
    assert p.options[c.OPT_VENDOR_SPECIFIC] == b"\x06\x01\x08\xff"
    assert p.options[c.OPT_CLIENT_UUID] == bytes(17)  # echoed
    assert p.options[c.OPT_SERVER_ID] == socket.inet_aton(SERVER)
    assert not {c.OPT_LEASE_TIME, c.OPT_SUBNET_MASK, c.OPT_ROUTER, c.OPT_DNS} & set(p.options)
    assert (dest.ip, dest.port) == ("255.255.255.255", 68)
    assert not proxy.asked_for_leases()


def test_proxy_behind_a_relay_answers_the_relay() -> None:
    # The relay forwards the DISCOVER to the address server and to us alike.
    proxy = Proxy()
    info = bytes.fromhex("0106657468302f31")  # circuit id "eth0/1"
    answer = proxy.send(arch=7, vendor=PXE_X64, giaddr="198.18.0.2",
                        extra={c.OPT_RELAY_AGENT: info})
    assert answer is not None
    p, dest = answer
    assert message_type(p) == c.DHCPOFFER and p.yiaddr == "0.0.0.0"
    assert p.giaddr == "198.18.0.2" and boot_file(p) == "snponly.efi"
    assert p.options[c.OPT_RELAY_AGENT] == info  # the relay finds its port by it
    assert (dest.ip, dest.port) == ("198.18.0.2", 67)
    assert not proxy.asked_for_leases()


def test_proxy_ignores_clients_that_do_not_boot() -> None:
    proxy = Proxy()
    assert proxy.send(vendor=b"udhcp 1.35.0") is None
    assert proxy.stats["ignored.not_a_boot_client"] == 1
    assert proxy.store.calls == []


def test_proxy_ignores_requests_to_the_address_server() -> None:
    proxy = Proxy()
    assert proxy.send(mtype=c.DHCPREQUEST, arch=7, vendor=PXE_X64, server_id="192.0.2.254",
                      requested="192.0.2.77") is None
    assert not proxy.asked_for_leases()


def test_proxy_answers_port_4011_request_to_its_source() -> None:
    proxy = Proxy()
    answer = proxy.send(mtype=c.DHCPREQUEST, arch=7, vendor=PXE_X64, ciaddr="192.0.2.77",
                        arrival=Arrival(port=c.PXE_PORT, broadcast=False,
                                        source=("192.0.2.77", 68)))
    assert answer is not None
    p, dest = answer
    assert message_type(p) == c.DHCPACK
    assert p.ciaddr == "192.0.2.77" and p.yiaddr == "0.0.0.0"
    assert boot_file(p) == "snponly.efi"
    assert (dest.ip, dest.port) == ("192.0.2.77", 68)


def test_proxy_ipxe_gets_the_script_of_its_machine() -> None:
    proxy = Proxy()
    proxy.store.machine(MAC, name="node1", os="debian")
    answer = proxy.send(IPXE_DISCOVER)
    assert answer is not None
    assert boot_file(answer[0]) == f"{URL}/boot/debian/{MAC}"
    assert proxy.events == [("dhcp.offer", MAC, None, f"proxy {URL}/boot/debian/{MAC}")]


def test_proxy_http_boot_client_gets_http_client_vendor_class() -> None:
    proxy = Proxy()
    answer = proxy.send(arch=16, vendor=b"HTTPClient:Arch:00016:UNDI:003001")
    assert answer is not None
    p = answer[0]
    assert p.options[c.OPT_VENDOR_CLASS] == b"HTTPClient"
    assert c.OPT_VENDOR_SPECIFIC not in p.options
    assert boot_file(p) == URL + "/tftp/snponly.efi"


def test_proxy_store_timeout_is_silence() -> None:
    proxy = Proxy()
    proxy.store.fail["machine.get"] = "timeout"
    assert proxy.send(EDK2_DISCOVER) is None
    assert proxy.stats["store_timeouts"] == 1
