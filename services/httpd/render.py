"""Rendering an OS template for one machine: the one path boot scripts and install configs take.

:class:`Renderer` finds the template (``boot/<os>/template/<name>.tmpl``,
the first of several names that exists), fetches the lease and the cluster
only when the template refers to them (each costs a bus request), builds
the context (``context.py``), renders it in the sandbox (``templates.py``)
and makes an iPXE result firmware-right (``scripts.check_script``). A
start script that needs neither lease nor cluster is kept: the same inputs
give the same text without rendering again.
"""

from __future__ import annotations

from typing import Sequence

from astralboot.common.config import Config
from astralboot.common.messages import LeaseRecord, MachineRecord
from astralboot.services.httpd import scripts
from astralboot.services.httpd.cache import Lru
from astralboot.services.httpd.catalog import Catalog, Directory
from astralboot.services.httpd.context import MachineGroup, cluster_view, template_context
from astralboot.services.httpd.errors import BadTemplate, NotFound
from astralboot.services.httpd.templates import Compiled

START = "start"
RENDERED_MAX = 8192  # start scripts kept, keyed by everything their text depends on


class Renderer:
    """Start scripts (``/boot``, ``/choose``) and install templates (``/action``, ``/config``)."""

    def __init__(self, config: Config, catalog: Catalog, directory: Directory) -> None:
        self.config = config
        self.catalog = catalog
        self.directory = directory
        self._rendered: Lru[tuple[object, ...], str] = Lru(RENDERED_MAX)

    def start_script(self, os: str, mac: str, ip: str | None,
                     machine: MachineRecord | None) -> str:
        """The OS's start script for a machine asking from ``ip``; it must be iPXE."""
        _, template = self.find(os, [START])
        cacheable = not (template.needs_lease or template.needs_cluster)
        key = (template.path, template.digest, repr(machine), mac, ip)
        if cacheable:
            hit = self._rendered.get(key)
            if hit is not None:
                return hit
        lease = None
        if template.needs_lease and ip:
            found = self.directory.lease_for_ip(ip)
            lease = found.lease if found else None
        text = self._render(template, os, mac=mac, ip=ip, machine=machine, lease=lease,
                            script=True)
        if cacheable:
            self._rendered.put(key, text)
        return text

    def install_template(self, os: str, names: Sequence[str], lease: LeaseRecord, ip: str,
                         machine: MachineRecord | None) -> tuple[str, str]:
        """The first of ``names`` that exists, rendered for the machine holding ``lease``.

        Returns the name found and the text; a template that starts ``#!ipxe``
        is checked as a script.
        """
        name, template = self.find(os, names)
        text = self._render(template, os, mac=lease.mac, ip=ip, machine=machine, lease=lease,
                            script=template.ipxe)
        return name, text

    def find(self, os: str, names: Sequence[str]) -> tuple[str, Compiled]:
        for name in names:
            template = self.catalog.template(os, name)
            if template is not None:
                return name, template
        raise NotFound(f"boot/{os}/template/{names[0]}.tmpl")

    def cluster(self, os: str) -> dict[str, MachineGroup]:
        """The OS's machines grouped by class, as templates see them."""
        classes = self.catalog.os(os).classes
        return cluster_view(self.directory.store.machines(os=os), classes)

    def _render(self, template: Compiled, os: str, *, mac: str, ip: str | None,
                machine: MachineRecord | None, lease: LeaseRecord | None,
                script: bool) -> str:
        cluster = self.cluster(os) if template.needs_cluster else None
        ctx = template_context(self.config, os, mac=mac, ip=ip, machine=machine, lease=lease,
                               cluster=cluster)
        text = template.render(ctx)
        if not script:
            return text
        try:
            return scripts.check_script(text)
        except ValueError as exc:
            raise BadTemplate(template.path, str(exc)) from None
