"""The admin JSON API under ``/api/``.

- ``GET /api/machines[?os=]``, ``GET /api/machines/<mac>``;
  ``PATCH /api/machines/<mac>`` changes the fields given (``null`` clears one),
  ``PUT`` also clears ``os``, ``class``, ``labels`` and ``boot_once`` when absent.
  Fields: ``name``, ``os``, ``class`` (or ``machine_class``), ``labels``, ``boot_once``,
  ``loader`` (``ipxe`` or ``shim``).
- ``GET /api/leases[?state=&subnet=]``
- ``GET /api/events[?mac=&after=&limit=]``
- ``GET /api/content?path=``: digest and size (and entries of a folder)
- ``GET /api/health``: what ``astralboot status`` reads; 200 when ok, 503 degraded.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import falcon

from astralboot.common import __version__
from astralboot.common.bus.schema import Record, record_to_dict
from astralboot.common.config import Config
from astralboot.common.errors import AstralBootError
from astralboot.common.messages import LOADERS, MACHINE_FIELDS, MachineRecord, MachineSet
from astralboot.services.httpd.auth import with_actor
from astralboot.services.httpd.bootonce import NEXT_BOOT_LABEL, next_boot
from astralboot.services.httpd.catalog import Catalog, Directory
from astralboot.services.httpd.inputs import check_class, check_mac, check_os, check_subpath
from astralboot.services.httpd.storeclient import StoreClient

_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                   r"[A-Za-z0-9])?)*")
_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}")
_LABEL_VALUE = re.compile(r"[A-Za-z0-9._:/@+,-]{0,255}")
LEASE_STATES = ("offered", "bound", "released", "declined", "expired")


def plain(record: Record) -> dict[str, Any]:
    """A record as JSON-ready data (bytes as hex)."""
    return {k: (v.hex() if isinstance(v, bytes) else v) for k, v in record_to_dict(record).items()}


def machine_json(m: MachineRecord) -> dict[str, Any]:
    out = plain(m)
    out["next_boot"] = next_boot(m)
    return out


def _bad(description: str) -> falcon.HTTPBadRequest:
    return falcon.HTTPBadRequest(title="bad request", description=description)


def _int_param(req: falcon.Request, name: str, default: int, lo: int, hi: int) -> int:
    text = req.get_param(name)
    if text is None:
        return default
    if not text.isdigit() or not lo <= int(text) <= hi:
        raise _bad(f"{name} must be a whole number from {lo} to {hi}")
    return int(text)


class MachinesResource:
    def __init__(self, store: StoreClient) -> None:
        self.store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        os_name = req.get_param("os")
        if os_name is not None:
            check_os(os_name)
        resp.media = {"machines": [machine_json(m) for m in self.store.machines(os=os_name)]}


class MachineResource:
    def __init__(self, catalog: Catalog, directory: Directory) -> None:
        self.catalog = catalog
        self.directory = directory

    def on_get(self, req: falcon.Request, resp: falcon.Response, mac: str) -> None:
        mac = check_mac(mac)
        machine = self.directory.store.machine(mac)
        if machine is None:
            raise falcon.HTTPNotFound(title="unknown machine", description=f"no machine {mac}")
        resp.media = machine_json(machine)

    def on_patch(self, req: falcon.Request, resp: falcon.Response, mac: str) -> None:
        self._change(req, resp, mac, replace=False)

    def on_put(self, req: falcon.Request, resp: falcon.Response, mac: str) -> None:
        self._change(req, resp, mac, replace=True)

    def _change(self, req: falcon.Request, resp: falcon.Response, mac: str,
                replace: bool) -> None:
        mac = check_mac(mac)
        body = req.get_media(default_when_empty=None)
        if not isinstance(body, dict):
            raise _bad("the body must be a JSON object")
        current = self.directory.store.machine(mac)
        change = with_actor(self.validate(mac, body, current, replace), req)
        record = self.directory.set(change)
        resp.media = machine_json(record)

    def validate(self, mac: str, body: dict[str, Any], current: MachineRecord | None,
                 replace: bool) -> MachineSet:
        body = dict(body)
        if "class" in body:
            body["machine_class"] = body.pop("class")
        unknown = set(body) - set(MACHINE_FIELDS)
        if unknown:
            raise _bad(f"unknown field(s): {', '.join(sorted(unknown))}; "
                       f"known: name, os, class, labels, boot_once, loader")
        fields: dict[str, Any] = {}
        clear = [k for k, v in body.items() if v is None]
        if replace:
            clear += [k for k in ("os", "machine_class", "labels", "boot_once", "loader")
                      if k not in body]
        name = body.get("name")
        if name is not None:
            if not isinstance(name, str) or len(name) > 253 or not _NAME.fullmatch(name):
                raise _bad(f"name {name!r} is not a valid host name")
            fields["name"] = name
        os_name = body.get("os")
        info = None
        if os_name is not None:
            if not isinstance(os_name, str):
                raise _bad("os must be a string")
            try:
                info = self.catalog.os(check_os(os_name))
            except AstralBootError:
                raise _bad(f"there is no bootable OS folder boot/{os_name}") from None
            fields["os"] = os_name
        elif current is not None and current.os and "os" not in clear:
            try:
                info = self.catalog.os(current.os)
            except AstralBootError:
                info = None
        cls = body.get("machine_class")
        if cls is not None:
            if not isinstance(cls, str):
                raise _bad("class must be a string")
            check_class(cls)
            if info is not None and info.classes and cls not in info.classes:
                raise _bad(f"{info.name} has no class {cls!r} (it has {', '.join(info.classes)})")
            fields["machine_class"] = cls
        labels = body.get("labels")
        if labels is not None:
            if not isinstance(labels, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) and _LABEL_KEY.fullmatch(k)
                    and _LABEL_VALUE.fullmatch(v) for k, v in labels.items()):
                raise _bad("labels must map names like rack or astralboot/x to values of "
                           "letters, digits and ._:/@+,-")
            fields["labels"] = labels
        loader = body.get("loader")
        if loader is not None:
            if loader not in LOADERS:
                raise _bad(f"loader must be one of {', '.join(LOADERS)}")
            fields["loader"] = loader
        once = body.get("boot_once")
        if once is not None:
            if not isinstance(once, bool):
                raise _bad("boot_once must be true or false")
            fields["boot_once"] = once
        new_os = os_name is not None and (current is None or current.os != os_name)
        if (new_os or once) and "labels" not in fields and current is not None \
                and NEXT_BOOT_LABEL in current.labels:
            # A new OS or a new boot-once install means: not the disk on the next boot.
            fields["labels"] = {k: v for k, v in current.labels.items()
                                if k != NEXT_BOOT_LABEL}
        try:
            return MachineSet(mac=mac, clear=tuple(clear), **fields)
        except ValueError as exc:
            raise _bad(str(exc)) from None


class LeasesResource:
    def __init__(self, store: StoreClient) -> None:
        self.store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        state = req.get_param("state")
        if state is not None and state not in LEASE_STATES:
            raise _bad(f"state must be one of {', '.join(LEASE_STATES)}")
        leases = self.store.leases(state=state, subnet=req.get_param("subnet"))  # type: ignore[arg-type]
        resp.media = {"leases": [plain(lease) for lease in leases]}


class EventsResource:
    def __init__(self, store: StoreClient) -> None:
        self.store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        mac = req.get_param("mac")
        if mac is not None:
            mac = check_mac(mac)
        after = _int_param(req, "after", 0, 0, 1 << 62)
        limit = _int_param(req, "limit", 1000, 1, 10000)
        events = self.store.events(mac=mac, after_id=after, limit=limit)
        resp.media = {"events": [plain(e) for e in events]}


class ContentResource:
    def __init__(self, store: StoreClient) -> None:
        self.store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        path = req.get_param("path") or ""
        if path:
            check_subpath(path.strip("/"))
        entry = self.store.stat(path.strip("/"))
        out = plain(entry)
        if entry.is_dir:
            out["entries"] = [plain(e) for e in self.store.listdir(entry.path)]
        resp.media = out


class HealthResource:
    """``/api/health``: ok while the store answers; degraded (503) when it does not."""

    def __init__(self, config: Config, store: StoreClient, details: Any) -> None:
        self.config = config
        self.store = store
        self.details = details
        self.started = time.time()

    def _check_store(self) -> str:
        try:
            self.store.health(deadline=min(1.0, self.config.bus.deadline))
        except AstralBootError as exc:
            return f"down: {exc}"
        return "ok"

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        store_state = self._check_store()
        ok = store_state == "ok"
        details = {"ready": True, "store": store_state, "bus": self.config.bus.endpoint,
                   "public_url": self.config.http.public_url,
                   "workers": self.config.http.workers, "threads": self.config.http.threads}
        details.update(self.details())
        resp.media = {"service": "httpd", "status": "ok" if ok else "degraded",
                      "version": __version__, "pid": os.getpid(), "started": self.started,
                      "details": details}
        resp.status = falcon.HTTP_200 if ok else falcon.HTTP_503
