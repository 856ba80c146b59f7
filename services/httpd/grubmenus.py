"""The GRUB side: what a Secure Boot machine's GRUB reads, through tftpd.

Debian's signed GRUB has TFTP but no HTTP, so tftpd answers its config
requests by fetching these URLs and serving the bytes:

- ``/grub/<mac>``: what GRUB reads first. The decision dhcpd and iPXE make
  today: a machine with an OS boots it (its start script translated, or its
  local disk once a boot-once install is done), any other gets the OS menu;
- ``/grub/choose/<os>/<mac>``, ``/grub/setclass/<os>/<class>/<mac>``: assign,
  as ``/choose`` and ``/setclass`` do (the machine itself only), then boot;
- ``/grub/class/<os>/<mac>``: the class menu.

Since tftpd asks, not the machine, tftpd names the machine's address in
:data:`CLIENT_HEADER`. :class:`RelayedClient` believes that header only
from this server itself; from anywhere else it is ignored, so no host on
the boot network can pass itself off as another machine.
"""

from __future__ import annotations

import dataclasses
import logging
from ipaddress import ip_address

import falcon

from astralboot.common.bus.events import HTTP_SCRIPT
from astralboot.common.config import Config
from astralboot.common.messages import MachineRecord, MachineSet
from astralboot.common.names import ipv4_text
from astralboot.services.httpd import bootonce, grub
from astralboot.services.httpd.catalog import Catalog, Directory
from astralboot.services.httpd.errors import BadInput, NotFound
from astralboot.services.httpd.inputs import check_class, check_mac, check_os
from astralboot.services.httpd.menus import AssignResource
from astralboot.services.httpd.render import Renderer
from astralboot.services.httpd.reporting import Reporter
from astralboot.services.httpd.scripts import menu_default

log = logging.getLogger(__name__)

CLIENT_HEADER = "X-AstralBoot-Client"  # tftpd: the address of the machine it asks for
GRUB_PREFIX = "/grub/"
CONFIG_TYPE = "text/plain; charset=utf-8"


def machine_address(peer: str, relayed: str | None, own: str) -> str:
    """The address a ``/grub/`` request is made for.

    ``relayed`` (the header) counts only when the request comes from this
    server (loopback or its own ``address``): that is tftpd asking for a
    machine. A relayed value that is not an IPv4 address is tftpd's fault.
    """
    if relayed is None or not _is_this_server(peer, own):
        return peer
    address = ipv4_text(relayed.strip())
    if address is None:
        raise BadInput(f"{CLIENT_HEADER}: {relayed[:40]!r} is not an IPv4 address")
    return address


def _is_this_server(peer: str, own: str) -> bool:
    if peer == own:
        return True
    try:
        return ip_address(peer).is_loopback
    except ValueError:
        return False


class RelayedClient:
    """Middleware: a ``/grub/`` request from tftpd is the machine's.

    Sets the remote address every resource, event and check uses to the
    machine's (one rule, :func:`machine_address`); the connection's own
    peer stays in ``req.context.peer``.
    """

    def __init__(self, own: str) -> None:
        self.own = own

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not req.path.startswith(GRUB_PREFIX):
            return
        peer = req.env.get("REMOTE_ADDR", "")
        req.context.peer = peer
        address = machine_address(peer, req.get_header(CLIENT_HEADER), self.own)
        if address != peer:
            req.env["REMOTE_ADDR"] = address


def _config(resp: falcon.Response, text: str) -> None:
    resp.content_type = CONFIG_TYPE
    resp.cache_control = ["no-store"]
    resp.text = text


class GrubStart:
    """An OS's start script for one machine, as a GRUB config that boots it."""

    def __init__(self, config: Config, catalog: Catalog, renderer: Renderer) -> None:
        self.public_url = config.http.public_url
        self.catalog = catalog
        self.renderer = renderer

    def config(self, os: str, mac: str, ip: str | None, machine: MachineRecord | None) -> str:
        script = self.renderer.start_script(os, mac, ip, machine)
        try:
            commands = grub.from_ipxe(script, os, self.public_url)
        except grub.NotGrubBootable as exc:
            log.warning("%s: %s", mac, exc.detail)
            raise
        return grub.boot(f"{os} for {mac}", self.catalog.os(os).description, commands)


class GrubMachineResource:
    """``/grub/<mac>``: the machine's OS (or disk) if it has one, else the menu."""

    def __init__(self, config: Config, catalog: Catalog, directory: Directory,
                 start: GrubStart, reporter: Reporter) -> None:
        self.config = config
        self.catalog = catalog
        self.directory = directory
        self.start = start
        self.reporter = reporter

    def on_get(self, req: falcon.Request, resp: falcon.Response, mac: str) -> None:
        mac = check_mac(mac)
        ip = req.remote_addr
        machine = self.directory.machine(mac)
        if machine is None or not machine.os:
            oses = self.catalog.oses()
            menu = self.config.menu
            _config(resp, grub.menu(f"menu for {mac}", grub.os_menu(oses),
                                    menu_default(oses, menu.default), menu.timeout))
            self.reporter.report(HTTP_SCRIPT, mac, ip, "grub menu")
            return
        if bootonce.next_boot(machine) == bootonce.DISK:
            _config(resp, grub.local_boot(f"{mac} boots its local disk"))
            self.reporter.report(HTTP_SCRIPT, mac, ip, "local disk")
            return
        os = check_os(machine.os)
        _config(resp, self.start.config(os, mac, ip, machine))
        self.reporter.report(HTTP_SCRIPT, mac, ip, f"{os}/start")


class GrubClassMenuResource:
    """``/grub/class/<os>/<mac>``: the classes of ``classes.toml``, the first by default."""

    def __init__(self, config: Config, catalog: Catalog, reporter: Reporter) -> None:
        self.config = config
        self.catalog = catalog
        self.reporter = reporter

    def on_get(self, req: falcon.Request, resp: falcon.Response, os: str, mac: str) -> None:
        mac = check_mac(mac)
        info = self.catalog.os(check_os(os))
        entries = grub.class_menu(info)
        default = entries[0].key if entries else None
        _config(resp, grub.menu(f"{info.name} classes for {mac}", entries, default,
                                self.config.menu.timeout))
        self.reporter.report(HTTP_SCRIPT, mac, req.remote_addr, f"{info.name} classes")


class GrubAssignResource(AssignResource):
    """``/grub/choose/<os>/<mac>`` and ``/grub/setclass/<os>/<class>/<mac>``.

    The same rule and record as the iPXE URLs (only the machine itself may
    choose; ``[http] self_service``), answered with a GRUB config. An OS
    GRUB cannot boot is refused before anything is recorded, so the
    machine does not come back to it on every boot.
    """

    def __init__(self, catalog: Catalog, directory: Directory, renderer: Renderer,
                 reporter: Reporter, start: GrubStart, enabled: bool = True) -> None:
        super().__init__(catalog, directory, renderer, reporter, enabled=enabled)
        self.start = start

    def on_get(self, req: falcon.Request, resp: falcon.Response, os: str, mac: str,
               cls: str | None = None) -> None:
        mac = check_mac(mac)
        self._only_from_the_machine(req, mac, f"{os}/{cls}" if cls else os)
        info = self.catalog.os(check_os(os))
        if cls is not None:
            check_class(cls)
            if cls not in info.classes:
                raise NotFound(f"{info.name} has no class {cls!r}")
        ip = req.remote_addr
        machine = self.directory.machine(mac)
        change = bootonce.assign(mac, machine, info, cls)
        self.start.config(info.name, mac, ip, _as_assigned(mac, machine, change))
        machine = self.directory.set(dataclasses.replace(change, actor=f"menu@{ip}"))
        _config(resp, self.start.config(info.name, mac, ip, machine))
        what = f"{info.name}/{cls}" if cls else info.name
        self.reporter.report(HTTP_SCRIPT, mac, ip, f"{what} chosen")


def _as_assigned(mac: str, machine: MachineRecord | None, change: MachineSet) -> MachineRecord:
    """The record ``change`` would make, near enough to check that GRUB can boot it."""
    record = machine or MachineRecord(mac=mac, name="node")
    fields: dict[str, object] = {"os": change.os}
    if change.boot_once is not None:
        fields["boot_once"] = change.boot_once
    if change.machine_class is not None:
        fields["machine_class"] = change.machine_class
    elif "machine_class" in change.clear:
        fields["machine_class"] = None
    if change.labels is not None:
        fields["labels"] = change.labels
    return dataclasses.replace(record, **fields)  # type: ignore[arg-type]
