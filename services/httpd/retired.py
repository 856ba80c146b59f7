"""The original server's routes that are gone for good: 410 with the reason.

The original AstralBoot also served rkt images (``/rocket/<name>`` with its
``ac-discovery`` page, ``/images/<source>/<rocket>/<image>``) and the spawn
API's systemd units for fleet (``/spawn/list``, ``/spawn/unit/<name>``).
rkt and fleet are both archived upstream, so these are not carried over; a
machine or script that still asks gets ``410 Gone`` and one line saying
why, not a bare 404 that reads like a missing file.
"""

from __future__ import annotations

import falcon

# URL prefix → the one line a client gets. ``/images/`` (plural, the
# original's ACI store) is not ``/image/`` (this server's boot files).
RETIRED: dict[str, str] = {
    "/rocket": "rkt image discovery is retired (rkt is archived upstream); "
               "boot files are served under /image/<os>/",
    "/images": "rkt ACI images are retired (rkt is archived upstream); "
               "boot files are served under /image/<os>/",
    "/spawn": "the spawn unit API is retired (fleet is archived upstream); "
              "render units as install templates under /action/<os>/<name>",
}


class RetiredResource:
    """One of :data:`RETIRED`'s prefixes: 410 Gone, text/plain, the reason."""

    def __init__(self, reason: str) -> None:
        self.body = (reason + "\n").encode()

    def __call__(self, req: falcon.Request, resp: falcon.Response, **_: str) -> None:
        resp.status = falcon.HTTP_410
        resp.content_type = falcon.MEDIA_TEXT
        resp.data = self.body if req.method != "HEAD" else b""
        resp.content_length = len(self.body)


def add_retired(app: falcon.App) -> None:
    """Route every retired prefix (itself and anything under it) to its reason."""
    for prefix, reason in RETIRED.items():
        app.add_sink(RetiredResource(reason), rf"^{prefix}(/.*)?$")
