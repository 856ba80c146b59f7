"""When the store cannot answer: 503 with Retry-After, never a hang; cached content goes on."""

from __future__ import annotations

import pytest

from httpd_support import IP, MAC, Client
from httpd_fakes import FakeStore


@pytest.mark.parametrize("url", [f"/boot/debian/{MAC}", "/choose", f"/choose/debian/{MAC}",
                                 "/image/debian/initrd.gz", "/action/debian/preseed",
                                 "/api/machines", "/api/leases", "/api/events"])
def test_store_down_is_503_with_retry_after(client: Client, fake: FakeStore, url: str) -> None:
    fake.down = True
    r = client.simulate_get(url)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "5"
    assert "store unavailable" in r.text


def test_images_already_resolved_keep_being_served_while_the_store_restarts(
        client: Client, fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP)
    assert client.simulate_get("/image/debian/linux").status_code == 200
    client.app.catalog.expire()         # the content TTL has run out...
    fake.down = True                    # ...and the store is restarting
    asked = len(fake.calls)
    r = client.simulate_get("/image/debian/linux")
    assert r.status_code == 200 and len(r.content) == 16384
    assert "content.stat" in fake.calls[asked:]  # it asked, got no answer, served the old one


def test_metrics_say_the_store_is_down(client: Client, fake: FakeStore) -> None:
    assert client.simulate_get("/metrics").status_code == 200  # the token is checked once
    fake.down = True
    text = client.simulate_get("/metrics").text
    assert "astralboot_store_up 0" in text
