"""The iPXE side: menus, OS and class assignment, per-machine boot scripts.

URLs of the original server, kept working:

- ``/choose``: the OS menu;
- ``/choose/<os>/<mac>``: assign the OS, then its start script;
- ``/class/<os>/<mac>`` and ``/setclass/<os>/<class>/<mac>``: the class menu
  and assigning a class (with its OS), then the start script;
- ``/boot/<os>/<mac>``: the machine's start script, or its local disk once
  a boot-once install is done.
"""

from __future__ import annotations

import dataclasses

import falcon

from astralboot.common.bus.events import HTTP_REFUSED, HTTP_SCRIPT
from astralboot.common.config import Config
from astralboot.common.names import ipv4_text
from astralboot.services.httpd import bootonce, scripts
from astralboot.services.httpd.cache import Lru
from astralboot.services.httpd.catalog import Catalog, Directory
from astralboot.services.httpd.inputs import check_class, check_mac, check_os
from astralboot.services.httpd.render import Renderer
from astralboot.services.httpd.reporting import Reporter

SCRIPT_TYPE = "text/plain; charset=utf-8"


def _script(resp: falcon.Response, text: str) -> None:
    resp.content_type = SCRIPT_TYPE
    resp.cache_control = ["no-store"]
    resp.text = text


class ChooseResource:
    """``/choose``: one entry per OS folder, local disk, iPXE shell; default after a timeout."""

    def __init__(self, config: Config, catalog: Catalog, reporter: Reporter) -> None:
        self.config = config
        self.catalog = catalog
        self.reporter = reporter
        self._cache: Lru[tuple[object, ...], str] = Lru(16)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        oses = self.catalog.oses()
        key = tuple(oses)
        text = self._cache.get(key)
        if text is None:
            menu = self.config.menu
            text = self._cache.put(key, scripts.menu(
                "AstralBoot: choose what ${netX/mac} boots",
                scripts.os_menu(oses, self.config.http.public_url),
                scripts.menu_default(oses, menu.default), menu.timeout))
        _script(resp, text)
        self.reporter.report(HTTP_SCRIPT, None, req.remote_addr, "menu")


class ClassMenuResource:
    """``/class/<os>/<mac>``: the classes of ``classes.toml``."""

    def __init__(self, config: Config, catalog: Catalog, reporter: Reporter) -> None:
        self.config = config
        self.catalog = catalog
        self.reporter = reporter

    def on_get(self, req: falcon.Request, resp: falcon.Response, os: str, mac: str) -> None:
        mac = check_mac(mac)
        info = self.catalog.os(check_os(os))
        entries = scripts.class_menu(info, self.config.http.public_url)
        default = entries[0].key if entries else None
        title = f"{scripts.ipxe_text(info.description)}: choose a class for {mac}"
        _script(resp, scripts.menu(title, entries, default, self.config.menu.timeout))
        self.reporter.report(HTTP_SCRIPT, mac, req.remote_addr, f"{info.name} classes")


class AssignResource:
    """``/choose/<os>/<mac>`` and ``/setclass/<os>/<class>/<mac>``: record, then boot.

    The original's self-service URLs, for the machine itself only: the menu
    on that machine asks from the address leased to its MAC. From anywhere
    else (any host on the boot network could otherwise make any machine
    reinstall itself) the answer is 403 and an ``http.refused`` event.
    ``[http] self_service = false`` turns them off.
    """

    def __init__(self, catalog: Catalog, directory: Directory, renderer: Renderer,
                 reporter: Reporter, enabled: bool = True) -> None:
        self.catalog = catalog
        self.directory = directory
        self.renderer = renderer
        self.reporter = reporter
        self.enabled = enabled

    def on_get(self, req: falcon.Request, resp: falcon.Response, os: str, mac: str,
               cls: str | None = None) -> None:
        mac = check_mac(mac)
        self._only_from_the_machine(req, mac, f"{os}/{cls}" if cls else os)
        info = self.catalog.os(check_os(os))
        if cls is not None:
            check_class(cls)
            if cls not in info.classes:
                raise falcon.HTTPNotFound(title="unknown class",
                                          description=f"{info.name} has no class {cls!r}")
        machine = self.directory.machine(mac)
        change = bootonce.assign(mac, machine, info, cls)
        machine = self.directory.set(dataclasses.replace(change, actor=f"menu@{req.remote_addr}"))
        _script(resp, self.renderer.start_script(info.name, mac, req.remote_addr, machine))
        what = f"{info.name}/{cls}" if cls else info.name
        self.reporter.report(HTTP_SCRIPT, mac, req.remote_addr, f"{what} chosen")

    def _only_from_the_machine(self, req: falcon.Request, mac: str, what: str) -> None:
        if not self.enabled:
            self.reporter.report(HTTP_REFUSED, mac, req.remote_addr,
                                 f"choose {what}: self-service is off")
            raise falcon.HTTPForbidden(title="self-service is off",
                                       description="[http] self_service = false")
        source = ipv4_text(req.remote_addr)
        lease = self.directory.lease_for_ip(source) if source else None
        if lease is None or lease.lease.mac != mac or lease.lease.state != "bound":
            self.reporter.report(HTTP_REFUSED, mac, req.remote_addr,
                                 f"choose {what} from {req.remote_addr}: not that machine's "
                                 "address")
            raise falcon.HTTPForbidden(
                title="not this machine", description=f"only {mac} itself (from the address "
                                                      "leased to it) may choose what it boots")


class BootResource:
    """``/boot/<os>/<mac>``: what dhcpd hands a machine that has an OS."""

    def __init__(self, catalog: Catalog, directory: Directory, renderer: Renderer,
                 reporter: Reporter) -> None:
        self.catalog = catalog
        self.directory = directory
        self.renderer = renderer
        self.reporter = reporter

    def on_get(self, req: falcon.Request, resp: falcon.Response, os: str, mac: str) -> None:
        mac = check_mac(mac)
        os = check_os(os)
        machine = self.directory.machine(mac)
        if bootonce.next_boot(machine) == bootonce.DISK:
            _script(resp, scripts.local_boot())
            self.reporter.report(HTTP_SCRIPT, mac, req.remote_addr, "local disk")
            return
        _script(resp, self.renderer.start_script(os, mac, req.remote_addr, machine))
        self.reporter.report(HTTP_SCRIPT, mac, req.remote_addr, f"{os}/start")
