"""Boot-once: the installer once, then the local disk."""

from __future__ import annotations

import pytest

from httpd_support import IP, MAC, Client
from httpd_fakes import FakeStore



@pytest.fixture(autouse=True)
def at_its_menu(fake: FakeStore) -> None:
    fake.add_lease(IP, MAC)


def test_boot_once_installs_once_then_boots_the_disk(client: Client, fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP, os="debian", boot_once=True)
    first = client.simulate_get(f"/boot/debian/{MAC}").text
    assert "kernel http://192.0.2.1:8080/image/debian/linux" in first
    # Kernel and initrd arrive; a reboot before the installer asks for its
    # answers runs the installer again.
    assert "kernel " in client.simulate_get(f"/boot/debian/{MAC}").text
    assert fake.machines_by_mac[MAC].boot_once is True
    # The installer fetches its preseed: the install is under way.
    assert client.simulate_get("/action/debian/preseed").status_code == 200
    m = fake.machines_by_mac[MAC]
    assert m.boot_once is False
    assert m.labels == {"astralboot/next-boot": "disk"}
    after = client.simulate_get(f"/boot/debian/{MAC}")
    assert after.status_code == 200
    assert "sanboot --no-describe --drive 0x80" in after.text
    assert "kernel" not in after.text
    assert fake.reported[-1].detail == "local disk"
    # Later templates of the same install change nothing.
    client.simulate_get("/action/debian/installed")
    assert fake.machines_by_mac[MAC].labels == {"astralboot/next-boot": "disk"}


def test_without_boot_once_the_installer_runs_every_boot(client: Client,
                                                         fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP, os="flatcar")
    client.simulate_get("/config/flatcar/ignition")
    assert "kernel " in client.simulate_get(f"/boot/flatcar/{MAC}").text
    assert fake.machines_by_mac[MAC].labels == {}


def test_choosing_from_the_menu_again_reinstalls(client: Client, fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP, os="debian", labels={"astralboot/next-boot": "disk",
                                                      "rack": "r1"})
    r = client.simulate_get(f"/choose/debian/{MAC}")
    assert "kernel " in r.text
    m = fake.machines_by_mac[MAC]
    assert m.boot_once is True and m.labels == {"rack": "r1"}


def test_template_of_another_os_does_not_consume_boot_once(client: Client,
                                                           fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP, os="debian", boot_once=True)
    client.simulate_get("/action/alpine/answers")
    assert fake.machines_by_mac[MAC].boot_once is True
