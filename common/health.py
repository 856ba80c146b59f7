"""Asking a running service whether it is healthy.

The store answers on the bus, dhcpd and tftpd on their control sockets, and
httpd over HTTP at ``/api/health``; every check ends within its deadline.
"""

from __future__ import annotations

import http.client
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from astralboot.common.bus.client import SyncBusClient
from astralboot.common.bus.security import ClientCurve, local_curve
from astralboot.common.config import Config
from astralboot.common.errors import AstralBootError, StartupError
from astralboot.common.messages import Health, HealthReply


@dataclass(frozen=True)
class ServiceHealth:
    service: str
    up: bool
    where: str
    status: str = "down"
    pid: int | None = None
    version: str | None = None
    started: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ready(self) -> bool:
        return self.up and self.status == "ok" and self.details.get("ready", True) is not False


def _from_reply(service: str, where: str, reply: HealthReply) -> ServiceHealth:
    return ServiceHealth(service=service, up=True, where=where, status=reply.status,
                         pid=reply.pid, version=reply.version, started=reply.started,
                         details=dict(reply.details))


def _bus_health(service: str, endpoint: str, timeout: float,
                curve: ClientCurve | None = None) -> ServiceHealth:
    with SyncBusClient(endpoint, deadline=timeout, retries=0, curve=curve) as client:
        try:
            reply = client.call(Health())
        except AstralBootError as exc:
            return ServiceHealth(service=service, up=False, where=endpoint, error=str(exc))
    assert isinstance(reply, HealthReply)
    return _from_reply(service, endpoint, reply)


def _http_health(config: Config, timeout: float) -> ServiceHealth:
    host = "127.0.0.1" if config.http.bind in ("0.0.0.0", "") else config.http.bind
    where = f"http://{host}:{config.http.port}/api/health"
    conn = http.client.HTTPConnection(host, config.http.port, timeout=timeout)
    try:
        conn.request("GET", "/api/health")
        resp = conn.getresponse()
        body = json.loads(resp.read() or b"{}")
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return ServiceHealth(service="httpd", up=False, where=where, error=str(exc) or repr(exc))
    finally:
        conn.close()
    if resp.status != 200:
        return ServiceHealth(service="httpd", up=True, where=where, status="degraded",
                             details=body if isinstance(body, dict) else {},
                             error=f"HTTP {resp.status}")
    return ServiceHealth(service="httpd", up=True, where=where,
                         status=body.get("status", "ok"), pid=body.get("pid"),
                         version=body.get("version"), started=body.get("started"),
                         details=body.get("details", {}))


def check(config: Config, service: str, timeout: float = 2.0) -> ServiceHealth:
    if service == "store":
        try:
            curve = local_curve(config)
        except StartupError as exc:
            return ServiceHealth(service="store", up=False, where=config.bus.endpoint,
                                 error=exc.reason)
        return _bus_health("store", config.bus.endpoint, timeout, curve)
    if service == "httpd":
        return _http_health(config, timeout)
    return _bus_health(service, config.control_endpoint(service), timeout)


def check_all(config: Config, services: tuple[str, ...] | None = None,
              timeout: float = 2.0) -> list[ServiceHealth]:
    """Every service's health (default: those ``config`` runs), asked in parallel
    so the wait is one deadline."""
    services = services or config.services
    with ThreadPoolExecutor(max_workers=len(services)) as pool:
        return list(pool.map(lambda s: check(config, s, timeout), services))
