"""The original server's rkt and spawn routes answer 410 Gone with the reason."""

from __future__ import annotations

import pytest
from httpd_support import IP, MAC, Client
from httpd_fakes import FakeStore


@pytest.mark.parametrize("path,says", [
    ("/rocket/etcd", "rkt image discovery is retired"),
    ("/rocket/etcd?ac-discovery=1", "rkt image discovery is retired"),
    ("/images/astral/etcd/etcd-latest-linux-amd64.aci", "rkt ACI images are retired"),
    ("/spawn/list", "the spawn unit API is retired"),
    ("/spawn/unit/ipfs", "the spawn unit API is retired"),
])
def test_retired_routes_say_why(client: Client, fake: FakeStore, path: str, says: str) -> None:
    fake.add_machine(MAC, ip=IP)
    r = client.simulate_get(path.split("?")[0], query_string=path.partition("?")[2])
    assert r.status_code == 410
    assert r.headers["content-type"].startswith("text/plain")
    assert r.text.startswith(says) and "archived upstream" in r.text
    assert fake.calls == []  # nothing asked of the store
    assert fake.reported == []  # and no boot event


def test_head_of_a_retired_route_has_no_body(client: Client) -> None:
    r = client.simulate_head("/spawn/list")
    assert r.status_code == 410 and r.content == b""


def test_boot_files_under_image_are_not_retired(client: Client, fake: FakeStore) -> None:
    # /image/ (this server's boot files) is not the original's /images/.
    fake.add_machine(MAC, ip=IP)
    assert client.simulate_get("/image/debian/linux").status_code == 200
    assert client.simulate_get("/imagesx/debian/linux").status_code == 404
    assert client.simulate_get("/rocketship").status_code == 404
