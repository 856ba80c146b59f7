"""Install templates rendered for the calling machine, found by its address.

- ``/action/<os>/<name>``: ``boot/<os>/template/<name>.tmpl``, e.g. the
  Debian preseed, a kickstart, cloud-init ``user-data``/``meta-data``;
- ``/config/<os>/<name>``: the same with the machine's class appended first
  (``ignition-etcd``), falling back to ``<name>`` for a machine without one.

The installer asks from the address its lease gave it, so the lease says
which machine this is. The first template a boot-once machine fetches ends
its boot-once install (see ``boot.py``).
"""

from __future__ import annotations

import logging

import falcon

from ...common.bus.events import HTTP_TEMPLATE
from ...common.config import Config
from . import boot, scripts
from .catalog import Catalog, Directory, not_found
from .context import MachineGroup, cluster_view, template_context
from .reporting import Reporter
from .templates import TemplateError

log = logging.getLogger(__name__)


def cluster_for(catalog: Catalog, directory: Directory, os: str) -> dict[str, MachineGroup]:
    classes = catalog.os(os).classes
    return cluster_view(directory.store.machines(os=os), classes)


def content_type_for(name: str, text: str) -> str:
    if name.endswith((".json", ".ign")) or name.startswith("ignition"):
        return "application/json"
    return "text/plain; charset=utf-8"


class TemplateResource:
    def __init__(self, config: Config, catalog: Catalog, directory: Directory,
                 reporter: Reporter, *, classed: bool) -> None:
        self.config = config
        self.catalog = catalog
        self.directory = directory
        self.reporter = reporter
        self.classed = classed

    def on_get(self, req: falcon.Request, resp: falcon.Response, os: str, name: str) -> None:
        os = boot.check_os(os)
        name = boot.check_template(name)
        ip = req.remote_addr
        found = self.directory.lease_for_ip(ip)
        if found is None:
            raise falcon.HTTPNotFound(
                title="unknown machine",
                description=f"no lease for {ip}: templates are rendered for the machine "
                            "holding the caller's address")
        lease = found.lease
        machine = found.machine or self.directory.machine(lease.mac)
        names = boot.config_template_names(name, machine) if self.classed else [name]
        for candidate in names:
            template = self.catalog.template(os, candidate)
            if template is not None:
                break
        else:
            raise not_found(f"boot/{os}/template/{names[0]}.tmpl")
        cluster = cluster_for(self.catalog, self.directory, os) if template.needs_cluster else None
        ctx = template_context(self.config, os, mac=lease.mac, ip=ip, machine=machine,
                               lease=lease, cluster=cluster)
        text = template.render(ctx)
        if template.ipxe:
            try:
                text = scripts.check_script(text)
            except ValueError as exc:
                raise TemplateError(template.path, str(exc)) from None
        if machine is not None and machine.os in (None, os):
            change = boot.consume_boot_once(machine)
            if change is not None:
                self.directory.set(change)
                log.info("%s: boot-once install of %s under way; next boot: local disk",
                         lease.mac, os)
        resp.content_type = content_type_for(candidate, text)
        resp.cache_control = ["no-store"]
        resp.text = text
        self.reporter.report(HTTP_TEMPLATE, lease.mac, ip, f"{os}/{candidate}")
