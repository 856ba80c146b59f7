"""The configured subnets, which one a message belongs to, and the options
every reply on it carries, encoded once at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from astralboot.common.config.model import Config, SubnetConfig

from astralboot.services.dhcpd.addresses import ip_int
from astralboot.services.dhcpd.constants import (
    OPT_BROADCAST,
    OPT_DNS,
    OPT_DOMAIN_NAME,
    OPT_ROUTER,
    OPT_SUBNET_MASK,
    OPT_TFTP_SERVER,
    ZERO_IP,
)
from astralboot.services.dhcpd.options import tlv


@dataclass(frozen=True, slots=True)
class SubnetProfile:
    config: SubnetConfig
    name: str  # the store's name for it, "198.18.0.0/16"
    network: int
    netmask: int
    options: dict[int, bytes]  # encoded options offered on this subnet

    def contains(self, ip: str) -> bool:
        return ip_int(ip) & self.netmask == self.network


def _profile(config: Config, subnet: SubnetConfig) -> SubnetProfile:
    net = subnet.network
    options = {
        OPT_SUBNET_MASK: tlv(OPT_SUBNET_MASK, net.netmask.packed),
        OPT_BROADCAST: tlv(OPT_BROADCAST, net.broadcast_address.packed),
        OPT_TFTP_SERVER: tlv(OPT_TFTP_SERVER, str(config.address).encode()),
    }
    # The local subnet's gateway defaults to the server (as in the original);
    # a relayed subnet has no sensible default, so none is sent.
    if subnet.gateway is not None:
        options[OPT_ROUTER] = tlv(OPT_ROUTER, subnet.gateway.packed)
    if subnet.dns:
        options[OPT_DNS] = tlv(OPT_DNS, b"".join(a.packed for a in subnet.dns))
    if config.domain:
        options[OPT_DOMAIN_NAME] = tlv(OPT_DOMAIN_NAME, config.domain.encode())
    return SubnetProfile(config=subnet, name=subnet.name, network=int(net.network_address),
                         netmask=int(net.netmask), options=options)


class SubnetTable:
    """Subnet choice (RFC 2131 4.3.1): giaddr's subnet when relayed, else the
    interface's own."""

    def __init__(self, config: Config) -> None:
        self.profiles = tuple(_profile(config, s) for s in config.dhcp.subnets)
        self.local = self.profiles[0] if self.profiles else None
        self.server_id = IPv4Address(config.address).packed

    def by_address(self, ip: str) -> SubnetProfile | None:
        n = ip_int(ip)
        for p in self.profiles:
            if n & p.netmask == p.network:
                return p
        return None

    def for_message(self, giaddr: str) -> SubnetProfile | None:
        """The subnet a message came from; None for an unknown relay."""
        if giaddr != ZERO_IP:
            return self.by_address(giaddr)
        return self.local
