"""What a template sees: the machine, its lease, the server and the cluster.

Pure functions from store records and the configuration to plain dicts.
Every string that came from a client or from the machine database (a DHCP
host name, a machine name from an imported file, label values) is
sanitised here to characters that are inert in every format the bundled
templates produce: iPXE scripts, kernel command lines, preseed and
kickstart lines, YAML and JSON. So ``a\\nchain http://x/`` or ``${...}`` in a
host name can never add a line, a command or an expansion anywhere.

Names follow the original server too (``Name``, ``IP``, ``BaseIP``,
``Cluster``, ``Config``, ``Lease``) so its templates keep working.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address
from typing import Any, Iterable
from urllib.parse import urlsplit

from astralboot.common.config import Config
from astralboot.common.messages import LeaseRecord, MachineRecord

_HOST_BAD = re.compile(r"[^A-Za-z0-9-]+")
_VALUE_BAD = re.compile(r"[^A-Za-z0-9._:/@+,-]+")
_KEY_BAD = re.compile(r"[^A-Za-z0-9._/-]+")


def safe_hostname(value: str | None) -> str | None:
    """A DNS-safe host name from anything a client sent (option 12, an import).

    Labels keep letters, digits and hyphens; anything else becomes a hyphen.
    None when nothing usable is left.
    """
    if not value:
        return None
    labels = []
    for label in value.split("."):
        label = _HOST_BAD.sub("-", label).strip("-")[:63]
        if label:
            labels.append(label)
    name = ".".join(labels)[:253]
    return name or None


def safe_value(value: object) -> str:
    """A label value or similar: letters, digits and ``._:/@+,-``; others become ``_``."""
    return _VALUE_BAD.sub("_", str(value))[:255]


def safe_key(value: str) -> str:
    return _KEY_BAD.sub("_", value)[:63] or "_"


class MachineGroup(list):  # type: ignore[type-arg]
    """The machines of one class; ``.Leases`` as in the original's cluster map."""

    @property
    def Leases(self) -> list[dict[str, Any]]:  # noqa: N802 (the original's name)
        return list(self)


def machine_view(m: MachineRecord) -> dict[str, Any]:
    name = safe_hostname(m.name) or "node"
    cls = safe_value(m.machine_class) if m.machine_class else None
    return {
        "mac": m.mac, "name": name, "ip": m.ip, "os": m.os, "machine_class": cls,
        "class": cls, "labels": {safe_key(k): safe_value(v) for k, v in m.labels.items()},
        "boot_once": m.boot_once, "first_seen": m.first_seen, "last_seen": m.last_seen,
        # the original's field names
        "Name": name, "IP": m.ip, "MAC": m.mac, "Class": cls or "", "Distro": m.os or "",
    }


def lease_view(lease: LeaseRecord | None, machine: MachineRecord | None) -> dict[str, Any] | None:
    if lease is None:
        return None
    cls = safe_value(machine.machine_class) if machine and machine.machine_class else None
    name = safe_hostname(machine.name) if machine else None
    return {
        "ip": lease.ip, "mac": lease.mac, "subnet": lease.subnet, "state": lease.state,
        "expires": lease.expires, "lease_time": lease.lease_time,
        "hostname": safe_hostname(lease.hostname),
        "IP": lease.ip, "MAC": lease.mac, "Name": name or "", "Class": cls or "",
        "Distro": (machine.os if machine else None) or "",
    }


def cluster_view(machines: Iterable[MachineRecord],
                 classes: Iterable[str]) -> dict[str, MachineGroup]:
    """Machines of one OS grouped by class, every declared class present, sorted by name."""
    groups: dict[str, MachineGroup] = {c: MachineGroup() for c in classes}
    for m in sorted(machines, key=lambda m: (safe_hostname(m.name) or "", m.mac)):
        key = safe_value(m.machine_class) if m.machine_class else "unclassified"
        groups.setdefault(key, MachineGroup()).append(machine_view(m))
    return groups


def base_host(public_url: str) -> str:
    """host[:port] of the public URL: what the original's ``http://{{ BaseIP }}/`` needs."""
    return urlsplit(public_url).netloc


def config_view(config: Config) -> dict[str, Any]:
    dns = [str(a) for a in config.dns]
    return {
        "domain": config.domain, "address": str(config.address),
        "network": str(config.network), "netmask": str(config.network.netmask),
        "prefix": config.network.prefixlen, "gateway": str(config.gateway), "dns": dns,
        "public_url": config.http.public_url, "http_port": config.http.port,
        "menu_timeout": config.menu.timeout,
        "Domain": config.domain, "BaseIP": base_host(config.http.public_url),
        "Gateway": str(config.gateway), "DNSServer": dns[0] if dns else "",
    }


LOCKED = "!"  # a crypt field no password matches


def template_context(config: Config, os_name: str, *, mac: str | None, ip: str | None,
                     machine: MachineRecord | None, lease: LeaseRecord | None = None,
                     cluster: dict[str, MachineGroup] | None = None) -> dict[str, Any]:
    """Everything a template can use. ``ip`` is the client's address."""
    mview = machine_view(machine) if machine else None
    name = mview["name"] if mview else ("node-" + mac.replace(":", "") if mac else "node")
    url = config.http.public_url
    client_ip = lease.ip if lease else ip
    if client_ip is not None:
        client_ip = str(IPv4Address(client_ip)) if _is_ipv4(client_ip) else None
    cfg = config_view(config)
    cls = mview["machine_class"] if mview else None
    ctx: dict[str, Any] = {
        "name": name, "hostname": name, "mac": mac, "ip": client_ip, "os": os_name,
        "machine_class": cls, "labels": mview["labels"] if mview else {},
        "machine": mview, "lease": lease_view(lease, machine), "config": cfg,
        "cluster": cluster or {},
        "server": str(config.address), "base_ip": cfg["BaseIP"], "public_url": url,
        "domain": config.domain,
        "image_url": f"{url}/image/{os_name}", "action_url": f"{url}/action/{os_name}",
        "config_url": f"{url}/config/{os_name}",
        # The site's own (astralboot init makes it); "!" locks the account.
        "password_hash": config.install.password_hash or LOCKED,
    }
    # The original's names, for templates carried over from it.
    old_lease = ctx["lease"] or {"IP": client_ip or "", "MAC": mac or "", "Name": name,
                                 "Class": cls or "", "Distro": os_name}
    ctx.update({"Name": name, "IP": client_ip or "", "BaseIP": cfg["BaseIP"],
                "Cluster": ctx["cluster"], "Config": cfg, "Lease": old_lease})
    return ctx


def _is_ipv4(text: str) -> bool:
    try:
        IPv4Address(text)
    except ValueError:
        return False
    return True
