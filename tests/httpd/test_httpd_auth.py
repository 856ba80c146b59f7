"""The admin face needs a token; the boot face never does (falcon TestClient).

Real gunicorn and the real store check the same in test_httpd_gunicorn.py.
"""

from __future__ import annotations

import pytest

from astralboot.common.config.model import Config
from astralboot.services.httpd.app import create_app
from httpd_fakes import FakeStore
from httpd_support import MAC, READ_TOKEN, WRITE_TOKEN, Client

ADMIN_READS = ["/api/machines", f"/api/machines/{MAC}", "/api/leases", "/api/events",
               "/api/content?path=boot", "/metrics"]
BOOT_FACE = ["/choose", f"/boot/debian/{MAC}", "/image/debian/linux", "/bin/ipxe.efi",
             "/api/health"]


@pytest.fixture
def anonymous(fake: FakeStore, config: Config) -> Client:
    fake.add_machine(MAC, ip="192.0.2.150", os="debian")
    return Client(create_app(fake, config), headers={"User-Agent": "iPXE/1.21.1"})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("path", ADMIN_READS)
def test_every_admin_route_wants_a_token(anonymous: Client, path: str) -> None:
    r = anonymous.simulate_get(path)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert anonymous.simulate_get(path, headers=bearer("abt_" + "x" * 43)).status_code == 401
    assert anonymous.simulate_get(path, headers={"Authorization": "Basic YWRtaW46YWRtaW4="}
                                  ).status_code == 401
    assert anonymous.simulate_get(path, headers=bearer(READ_TOKEN)).status_code == 200
    assert anonymous.simulate_get(path, headers=bearer(WRITE_TOKEN)).status_code == 200


@pytest.mark.parametrize("method", ["PATCH", "PUT"])
def test_writes_want_a_write_token(anonymous: Client, fake: FakeStore, method: str) -> None:
    body = {"os": "debian", "boot_once": True}
    path = f"/api/machines/{MAC}"
    assert anonymous.simulate_request(method, path, json=body).status_code == 401
    r = anonymous.simulate_request(method, path, json=body, headers=bearer(READ_TOKEN))
    assert r.status_code == 403 and "may only read" in r.json["description"]
    assert fake.changes == []  # nothing changed by either
    r = anonymous.simulate_request(method, path, json=body, headers=bearer(WRITE_TOKEN))
    assert r.status_code == 200
    assert [c.actor for c in fake.changes] == ["token:admin"]  # the audit trail


def test_a_revoked_token_stops_at_once(anonymous: Client, fake: FakeStore) -> None:
    assert anonymous.simulate_get("/api/leases", headers=bearer(WRITE_TOKEN)).status_code == 200
    fake.tokens.clear()
    assert anonymous.simulate_get("/api/leases", headers=bearer(WRITE_TOKEN)).status_code == 401


def test_a_token_never_checked_is_not_taken_while_the_store_is_down(anonymous: Client,
                                                                    fake: FakeStore) -> None:
    fake.down = True
    assert anonymous.simulate_get("/metrics", headers=bearer(READ_TOKEN)).status_code == 503
    fake.down = False
    assert anonymous.simulate_get("/metrics", headers=bearer(READ_TOKEN)).status_code == 200
    fake.down = True  # checked once: reads go on, writes do not
    assert anonymous.simulate_get("/metrics", headers=bearer(READ_TOKEN)).status_code == 200
    r = anonymous.simulate_patch(f"/api/machines/{MAC}", json={"os": "debian"},
                                 headers=bearer(WRITE_TOKEN))
    assert r.status_code == 503


@pytest.mark.parametrize("path", BOOT_FACE)
def test_the_boot_face_needs_no_token(anonymous: Client, path: str) -> None:
    assert anonymous.simulate_get(path).status_code == 200
