"""Install templates rendered for the calling machine, found by its address.

- ``/action/<os>/<name>``: ``boot/<os>/template/<name>.tmpl``, e.g. the
  Debian preseed, a kickstart, cloud-init ``user-data``/``meta-data``;
- ``/config/<os>/<name>``: the same with the machine's class appended first
  (``ignition-etcd``), falling back to ``<name>`` for a machine without one.

The installer asks from the address its lease gave it, so the lease says
which machine this is. The first template a boot-once machine fetches ends
its boot-once install (see ``bootonce.py``); rendering is ``render.py``'s.
"""

from __future__ import annotations

import logging

import falcon

from astralboot.common.bus.events import HTTP_TEMPLATE
from astralboot.services.httpd import bootonce
from astralboot.services.httpd.catalog import Directory
from astralboot.services.httpd.classes import config_template_names
from astralboot.services.httpd.inputs import check_os, check_template
from astralboot.services.httpd.render import Renderer
from astralboot.services.httpd.reporting import Reporter

log = logging.getLogger(__name__)


def content_type_for(name: str, text: str) -> str:
    if name.endswith((".json", ".ign")) or name.startswith("ignition"):
        return "application/json"
    return "text/plain; charset=utf-8"


class TemplateResource:
    def __init__(self, renderer: Renderer, directory: Directory, reporter: Reporter, *,
                 classed: bool) -> None:
        self.renderer = renderer
        self.directory = directory
        self.reporter = reporter
        self.classed = classed

    def on_get(self, req: falcon.Request, resp: falcon.Response, os: str, name: str) -> None:
        os = check_os(os)
        name = check_template(name)
        ip = req.remote_addr
        found = self.directory.lease_for_ip(ip)
        if found is None:
            raise falcon.HTTPNotFound(
                title="unknown machine",
                description=f"no lease for {ip}: templates are rendered for the machine "
                            "holding the caller's address")
        lease = found.lease
        machine = found.machine or self.directory.machine(lease.mac)
        names = config_template_names(name, machine) if self.classed else [name]
        candidate, text = self.renderer.install_template(os, names, lease, ip, machine)
        if machine is not None and machine.os in (None, os):
            change = bootonce.consume_boot_once(machine)
            if change is not None:
                self.directory.set(change)
                log.info("%s: boot-once install of %s under way; next boot: local disk",
                         lease.mac, os)
        resp.content_type = content_type_for(candidate, text)
        resp.cache_control = ["no-store"]
        resp.text = text
        self.reporter.report(HTTP_TEMPLATE, lease.mac, ip, f"{os}/{candidate}")
