"""The admin face's door: bearer tokens on ``/api/*`` (health aside) and ``/metrics``.

The boot face (menus, scripts, images, templates) is what firmware and
installers fetch with no credentials, by design of PXE; it stays open and
read-only. Everything an operator reads or changes through the API needs
``Authorization: Bearer <token>``: 401 without one (or with one that is
unknown or revoked), 403 when a read-only token tries a write. The token's
name goes with every change it makes, into the store's audit event.

A token is checked against the store on every admin request (one bus round
trip; the admin API is not a hot path), so a revoked token stops at once.
Only while the store does not answer is a token's last good check (up to
``STALE_OK`` old) taken instead, for reads: ``/metrics`` and the API can then
still say that the store is down, and nothing can be revoked or changed
meanwhile anyway.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import falcon

from astralboot.common import tokens
from astralboot.common.errors import BusTimeout, ErrorCode, RemoteError
from astralboot.common.logs import SenderLimit
from astralboot.common.messages import MachineSet, TokenInfo
from astralboot.services.httpd.storeclient import StoreClient

log = logging.getLogger(__name__)

READS = frozenset(("GET", "HEAD", "OPTIONS"))
OPEN_ON_BOTH = frozenset(("/api/health",))
STALE_OK = 600.0  # seconds a token's last good check stands in while the store is down
KNOWN_MAX = 1024  # tokens whose last good check is remembered
CHALLENGE = 'Bearer realm="astralboot admin"'


def _unauthorized(description: str) -> falcon.HTTPUnauthorized:
    return falcon.HTTPUnauthorized(title="unauthorized", description=description,
                                   challenges=[CHALLENGE])


class AdminAuth:
    """falcon middleware: which routes need a token, and checking it."""

    def __init__(self, store: StoreClient, admin_routes: frozenset[str], *,
                 listener: tuple[str, int] | None = None, boot_face_admin: bool = True) -> None:
        self.store = store
        self.admin_routes = admin_routes
        # [admin] port: requests that came in on it (gunicorn names the
        # listener in SERVER_NAME/PORT) see the admin face only; the boot
        # listener keeps it only with [admin] boot_face.
        self.listener = (listener[0], str(listener[1])) if listener else None
        self.boot_face_admin = boot_face_admin
        self._warnings = SenderLimit()
        self._known: dict[str, tuple[TokenInfo, float]] = {}  # digest -> (token, checked at)

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         params: dict[str, object]) -> None:
        admin_route = req.uri_template in self.admin_routes
        at_admin = self.listener is not None and (
            req.env.get("SERVER_NAME"), req.env.get("SERVER_PORT")) == self.listener
        if at_admin and not admin_route and req.uri_template not in OPEN_ON_BOTH:
            raise falcon.HTTPNotFound(title="not on the admin face")
        if not admin_route:
            return
        if not at_admin and not self.boot_face_admin:
            raise falcon.HTTPNotFound(title="the admin face is on its own listener",
                                      description="[admin] port; [admin] boot_face = false")
        token = self.authenticate(req)
        if req.method not in READS and token.scope != "write":
            raise falcon.HTTPForbidden(title="forbidden",
                                       description=f"token {token.name} may only read")
        req.context.actor = f"token:{token.name}"

    def authenticate(self, req: falcon.Request) -> TokenInfo:
        header = req.get_header("Authorization")
        if not header:
            raise _unauthorized("this is the admin API: send Authorization: Bearer <token> "
                                "(astralboot token create NAME)")
        scheme, _, secret = header.partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not tokens.well_formed(secret):
            self._refused(req, "not a bearer token")
            raise _unauthorized("not an AstralBoot bearer token")
        token = self._check(tokens.digest(secret), req.method in READS)
        if token is None:
            self._refused(req, "unknown or revoked token")
            raise _unauthorized("unknown or revoked token")
        return token

    def _check(self, digest: str, read: bool) -> TokenInfo | None:
        try:
            token = self.store.token(digest)
        except (BusTimeout, RemoteError) as exc:
            if isinstance(exc, RemoteError) and exc.code is not ErrorCode.UNAVAILABLE:
                raise
            known = self._known.get(digest)
            if read and known is not None and time.monotonic() - known[1] < STALE_OK:
                return known[0]
            raise
        if token is None:
            self._known.pop(digest, None)
        else:
            if len(self._known) >= KNOWN_MAX:
                self._known.pop(next(iter(self._known)))
            self._known[digest] = (token, time.monotonic())
        return token

    def _refused(self, req: falcon.Request, why: str) -> None:
        self._warnings.log(log, logging.WARNING, req.remote_addr, time.monotonic(),
                           "admin request %s %s from %s refused: %s", req.method, req.path,
                           req.remote_addr, why)


def with_actor(change: MachineSet, req: falcon.Request) -> MachineSet:
    """``change`` carrying who made it (the token, set by :class:`AdminAuth`)."""
    actor = getattr(req.context, "actor", None)
    return dataclasses.replace(change, actor=actor) if actor else change
