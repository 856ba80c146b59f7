"""The falcon application: :func:`create_app` wires resources to a store.

``create_app(store, config)`` is all a test needs (with a fake store) and
all gunicorn runs (with :class:`~astralboot.services.httpd.storeclient.BusStore`).
Domain errors are mapped to HTTP once, here: a store that does not answer
or cannot reach its content is 503 with Retry-After, never a hang; a miss
is answered the same whether the store or this process noticed it.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import falcon

from astralboot.common.bus.events import HTTP_IMAGE
from astralboot.common.config import Config
from astralboot.common.errors import AstralBootError, BusTimeout, ErrorCode, RemoteError
from astralboot.common.names import ipv4_text
from astralboot.services.httpd import actions, api, grubmenus, images, menus
from astralboot.services.httpd.auth import AdminAuth
from astralboot.services.httpd.catalog import Catalog, Directory
from astralboot.services.httpd.errors import BadInput, BadTemplate, Unserved
from astralboot.services.httpd.metrics import Metrics, MetricsMiddleware, MetricsResource
from astralboot.services.httpd.render import Renderer
from astralboot.services.httpd.reporting import Reporter
from astralboot.services.httpd.retired import add_retired
from astralboot.services.httpd.storeclient import StoreClient

log = logging.getLogger(__name__)

RETRY_AFTER = 5  # seconds; a store restart or an IPFS hiccup

# URI template → the route label metrics use
ROUTES = {
    "/choose": "menu",
    "/choose/{os}/{mac}": "choose",
    "/class/{os}/{mac}": "class",
    "/setclass/{os}/{cls}/{mac}": "setclass",
    "/boot/{os}/{mac}": "boot",
    "/grub/{mac}": "boot",  # GRUB's counterparts of the iPXE URLs count with them
    "/grub/choose/{os}/{mac}": "choose",
    "/grub/class/{os}/{mac}": "class",
    "/grub/setclass/{os}/{cls}/{mac}": "setclass",
    "/image/{os}/{path:path}": "image",
    "/bin/{path:path}": "bin",
    "/tftp/{path:path}": "tftp",
    "/action/{os}/{name}": "action",
    "/config/{os}/{name}": "config",
    "/api/machines": "api",
    "/api/machines/{mac}": "api",
    "/api/leases": "api",
    "/api/events": "api",
    "/api/content": "api",
    "/api/health": "health",
    "/metrics": "metrics",
}

# By error code: what the store answered, or what httpd found itself (Unserved).
_CODE_STATUS = {
    ErrorCode.NOT_FOUND: falcon.HTTP_404,
    ErrorCode.BAD_REQUEST: falcon.HTTP_400,
    ErrorCode.CONFLICT: falcon.HTTP_409,
    ErrorCode.FORBIDDEN: falcon.HTTP_502,  # this httpd's bus key lacks a right: ours to fix
    ErrorCode.UNAVAILABLE: falcon.HTTP_503,
    ErrorCode.POOL_EXHAUSTED: falcon.HTTP_503,
    ErrorCode.INTERNAL: falcon.HTTP_502,
}


def _unavailable(req: falcon.Request, resp: falcon.Response, ex: Exception,
                 params: dict[str, Any]) -> None:
    log.warning("%s %s: store unavailable: %s", req.method, req.path, ex)
    raise falcon.HTTPServiceUnavailable(title="store unavailable", description=str(ex),
                                        retry_after=RETRY_AFTER)


def _coded(req: falcon.Request, resp: falcon.Response, ex: RemoteError | Unserved,
           params: dict[str, Any]) -> None:
    status = _CODE_STATUS[ex.code]
    if status == falcon.HTTP_503:
        _unavailable(req, resp, ex, params)
    if status == falcon.HTTP_502:
        log.error("%s %s: store error: %s", req.method, req.path, ex)
    raise falcon.HTTPError(status, title=ex.code.value, description=ex.detail)


def _bad_input(req: falcon.Request, resp: falcon.Response, ex: BadInput,
               params: dict[str, Any]) -> None:
    raise falcon.HTTPBadRequest(title="bad request", description=str(ex))


def _template(req: falcon.Request, resp: falcon.Response, ex: BadTemplate,
              params: dict[str, Any]) -> None:
    log.error("%s %s: %s", req.method, req.path, ex)
    raise falcon.HTTPInternalServerError(title="template error", description=str(ex))


class PeerAddress:
    """IPv4 clients on a dual-stack socket (systemd's ``ListenStream=80``) arrive as
    ``::ffff:192.0.2.7``: every resource sees the plain IPv4 address, which is
    what leases, events and templates are keyed by."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        addr = req.env.get("REMOTE_ADDR", "")
        if addr[:7].lower() == "::ffff:":
            plain = ipv4_text(addr)
            if plain is not None:
                req.env["REMOTE_ADDR"] = plain


class HttpdApp(falcon.App):
    """falcon's App plus handles on the parts tests and the runner look at."""

    reporter: Reporter
    catalog: Catalog
    directory: Directory
    metrics: Metrics


def create_app(store: StoreClient, config: Config, *, metrics: Metrics | None = None,
               catalog: Catalog | None = None, directory: Directory | None = None,
               admin_listener: tuple[str, int] | None = None) -> HttpdApp:
    metrics = metrics or Metrics()
    catalog = catalog or Catalog(store)
    directory = directory or Directory(store)
    reporter = Reporter(store, metrics.stage)

    admin = frozenset(route for route, label in ROUTES.items() if label in ("api", "metrics"))
    auth = AdminAuth(store, admin, listener=admin_listener,
                     boot_face_admin=config.admin.boot_face or admin_listener is None)
    app = HttpdApp(middleware=[PeerAddress(), grubmenus.RelayedClient(str(config.address)),
                               MetricsMiddleware(metrics, ROUTES), auth])
    app.req_options.strip_url_path_trailing_slash = False
    app.reporter, app.catalog, app.directory, app.metrics = reporter, catalog, directory, metrics

    renderer = Renderer(config, catalog, directory)
    assign = menus.AssignResource(catalog, directory, renderer, reporter,
                                  enabled=config.http.self_service)
    app.add_route("/choose", menus.ChooseResource(config, catalog, reporter))
    app.add_route("/choose/{os}/{mac}", assign)
    app.add_route("/class/{os}/{mac}", menus.ClassMenuResource(config, catalog, reporter))
    app.add_route("/setclass/{os}/{cls}/{mac}", assign)
    app.add_route("/boot/{os}/{mac}", menus.BootResource(catalog, directory, renderer, reporter))

    # The same choices for Secure Boot machines, whose GRUB reads them through tftpd.
    start = grubmenus.GrubStart(config, catalog, renderer)
    grub_assign = grubmenus.GrubAssignResource(catalog, directory, renderer, reporter, start,
                                               enabled=config.http.self_service)
    app.add_route("/grub/{mac}",
                  grubmenus.GrubMachineResource(config, catalog, directory, start, reporter))
    app.add_route("/grub/choose/{os}/{mac}", grub_assign)
    app.add_route("/grub/class/{os}/{mac}", grubmenus.GrubClassMenuResource(config, catalog,
                                                                            reporter))
    app.add_route("/grub/setclass/{os}/{cls}/{mac}", grub_assign)

    app.add_route("/image/{os}/{path:path}",
                  images.FileResource(catalog, reporter, images.image_folder))
    app.add_route("/bin/{path:path}", images.FileResource(catalog, reporter, lambda p: "bin/"))
    app.add_route("/tftp/{path:path}", images.FileResource(catalog, reporter, lambda p: "tftp/",
                                                           HTTP_IMAGE))

    app.add_route("/action/{os}/{name}",
                  actions.TemplateResource(renderer, directory, reporter, classed=False))
    app.add_route("/config/{os}/{name}",
                  actions.TemplateResource(renderer, directory, reporter, classed=True))

    app.add_route("/api/machines", api.MachinesResource(store))
    app.add_route("/api/machines/{mac}", api.MachineResource(catalog, directory))
    app.add_route("/api/leases", api.LeasesResource(store))
    app.add_route("/api/events", api.EventsResource(store))
    app.add_route("/api/content", api.ContentResource(store))
    app.add_route("/api/health", api.HealthResource(config, store, lambda: _details(reporter)))
    app.add_route("/metrics", MetricsResource(metrics, lambda: _lease_counts(store)))
    add_retired(app)  # the original's rkt and spawn routes: 410 with the reason

    app.add_error_handler(BusTimeout, _unavailable)
    app.add_error_handler(RemoteError, _coded)
    app.add_error_handler(Unserved, _coded)
    app.add_error_handler(BadInput, _bad_input)
    app.add_error_handler(BadTemplate, _template)
    return app


def _details(reporter: Reporter) -> dict[str, str | int | float | bool]:
    return {f"events.{k}": v for k, v in reporter.stats.items()}


def _lease_counts(store: StoreClient) -> Counter[str] | None:
    try:
        return Counter(lease.state for lease in store.leases())
    except AstralBootError as exc:
        log.warning("metrics: no lease counts: %s", exc)
        return None
