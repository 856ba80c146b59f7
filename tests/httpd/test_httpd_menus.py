"""The iPXE menus and per-machine scripts, through falcon's TestClient."""

from __future__ import annotations

from pathlib import Path

import pytest

from httpd_support import IP, MAC, Client, make_config
from httpd_fakes import FakeStore

from astralboot.services.httpd.app import create_app

OSES = ("alpine", "debian", "debian-arm64", "flatcar", "rocky", "ubuntu")


@pytest.fixture(autouse=True)
def at_its_menu(fake: FakeStore) -> None:
    """The requests come from the address leased to MAC: the machine at its own menu."""
    fake.add_lease(IP, MAC)


def test_menu_offers_every_os_folder_local_disk_and_shell(client: Client) -> None:
    r = client.simulate_get("/choose")
    assert r.status_code == 200
    assert r.text.startswith("#!ipxe\n")
    for os in OSES:
        assert f"\n:os-{os}\n" in r.text
    assert "chain http://192.0.2.1:8080/choose/debian/${netX/mac} || goto failed" in r.text
    assert "chain http://192.0.2.1:8080/class/flatcar/${netX/mac}" in r.text  # has classes
    assert "item local Boot from local disk" in r.text
    assert "item shell iPXE shell" in r.text
    assert "sanboot --no-describe --drive 0x80" in r.text


def test_menu_goes_on_to_the_configured_default_after_the_timeout(client: Client) -> None:
    r = client.simulate_get("/choose")
    assert "choose --default os-debian --timeout 10000 target || goto shell" in r.text


def test_menu_default_and_timeout_follow_the_config(tmp_path: Path, data: Path,
                                                     fake: FakeStore) -> None:
    config = make_config(tmp_path, data, menu__default="rocky", menu__timeout=0)
    r = Client(create_app(fake, config)).simulate_get("/choose")
    assert "choose --default os-rocky target || goto shell" in r.text  # 0: waits forever


def test_menu_default_that_is_not_an_os_falls_back_to_local_disk(tmp_path: Path, data: Path,
                                                                 fake: FakeStore) -> None:
    config = make_config(tmp_path, data, menu__default="windows", menu__timeout=5)
    r = Client(create_app(fake, config)).simulate_get("/choose")
    assert "choose --default local --timeout 5000 target" in r.text


def test_os_folder_without_start_template_is_not_offered(client: Client, data: Path) -> None:
    (data / "boot" / "notes" / "template").mkdir(parents=True)
    (data / "boot" / "notes" / "README").write_text("not an OS")
    assert ":os-notes" not in client.simulate_get("/choose").text


def test_menu_event_is_attributed_by_the_callers_lease(client: Client, fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP)
    client.simulate_get("/choose")
    assert [(e.stage, e.mac, e.detail) for e in fake.reported] == [("http.script", MAC, "menu")]


def test_choosing_an_os_assigns_it_and_returns_its_start_script(client: Client,
                                                                 fake: FakeStore) -> None:
    r = client.simulate_get(f"/choose/debian/{MAC}")
    assert r.status_code == 200
    assert r.text.startswith("#!ipxe")
    assert "kernel http://192.0.2.1:8080/image/debian/linux" in r.text
    machine = fake.machines_by_mac[MAC]
    assert machine.os == "debian"
    assert machine.boot_once is True  # classes.toml: boot = "once"
    assert fake.reported[-1].stage == "http.script"
    assert fake.reported[-1].mac == MAC


def test_choosing_accepts_hyphenated_and_upper_case_macs(client: Client, fake: FakeStore) -> None:
    fake.add_lease(IP, "52:54:00:ab:cd:ef")
    r = client.simulate_get("/choose/debian/52-54-00-AB-CD-EF")
    assert r.status_code == 200
    assert fake.machines_by_mac["52:54:00:ab:cd:ef"].os == "debian"


def test_choosing_a_live_os_does_not_set_boot_once(client: Client, fake: FakeStore) -> None:
    client.simulate_get(f"/choose/flatcar/{MAC}")
    assert fake.machines_by_mac[MAC].boot_once is False  # boot = "always"


def test_choosing_an_unknown_os_is_404_and_changes_nothing(client: Client,
                                                            fake: FakeStore) -> None:
    assert client.simulate_get(f"/choose/windows/{MAC}").status_code == 404
    assert MAC not in fake.machines_by_mac


def test_class_menu_lists_the_classes_of_classes_toml(client: Client) -> None:
    r = client.simulate_get(f"/class/flatcar/{MAC}")
    assert r.status_code == 200
    assert "chain http://192.0.2.1:8080/setclass/flatcar/etcd/${netX/mac}" in r.text
    assert "chain http://192.0.2.1:8080/setclass/flatcar/worker/${netX/mac}" in r.text
    assert "choose --default os-etcd --timeout 10000" in r.text


def test_setclass_records_os_and_class_then_boots(client: Client, fake: FakeStore) -> None:
    r = client.simulate_get(f"/setclass/flatcar/worker/{MAC}")
    assert r.status_code == 200
    assert "flatcar_production_pxe.vmlinuz" in r.text
    m = fake.machines_by_mac[MAC]
    assert (m.os, m.machine_class) == ("flatcar", "worker")


def test_setclass_with_a_class_the_os_does_not_have_is_404(client: Client,
                                                           fake: FakeStore) -> None:
    assert client.simulate_get(f"/setclass/flatcar/database/{MAC}").status_code == 404
    assert MAC not in fake.machines_by_mac


def test_choosing_another_os_drops_a_class_that_means_nothing_there(client: Client,
                                                                    fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP, os="flatcar", machine_class="etcd")
    client.simulate_get(f"/choose/debian/{MAC}")
    assert fake.machines_by_mac[MAC].machine_class is None


def test_boot_script_names_the_machine(client: Client, fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP, os="debian", name="web1")
    r = client.simulate_get(f"/boot/debian/{MAC}")
    assert r.status_code == 200
    assert "hostname=web1 domain=lab.test" in r.text
    assert "preseed/url=http://192.0.2.1:8080/action/debian/preseed" in r.text
    assert ("http.script", MAC, "debian/start") == (
        fake.reported[-1].stage, fake.reported[-1].mac, fake.reported[-1].detail)


def test_boot_script_for_a_machine_the_store_has_never_seen(client: Client) -> None:
    r = client.simulate_get(f"/boot/debian/{MAC}")
    assert r.status_code == 200
    assert "hostname=node-525400123456" in r.text


def test_boot_script_of_every_bundled_os(client: Client, fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP)
    for os in OSES:
        r = client.simulate_get(f"/boot/{os}/{MAC}")
        assert r.status_code == 200, (os, r.text)
        assert r.text.startswith("#!ipxe\n")
        assert "\nkernel http://192.0.2.1:8080/image/" in r.text
        assert "\nboot" in r.text


def test_boot_script_for_an_unknown_os_is_404(client: Client) -> None:
    assert client.simulate_get(f"/boot/plan9/{MAC}").status_code == 404


def test_boot_script_follows_a_changed_template(client: Client, data: Path,
                                                fake: FakeStore) -> None:
    first = client.simulate_get(f"/boot/debian/{MAC}").text
    start = data / "boot" / "debian" / "template" / "start.tmpl"
    start.write_text(start.read_text().replace("priority=critical", "priority=high"))
    client.app.catalog.forget()  # as after the content TTL
    second = client.simulate_get(f"/boot/debian/{MAC}").text
    assert "priority=critical" in first and "priority=high" in second


def test_second_boot_script_costs_no_store_round_trip_for_content(client: Client,
                                                                  fake: FakeStore) -> None:
    client.simulate_get(f"/boot/debian/{MAC}")
    before = list(fake.calls)
    client.simulate_get(f"/boot/debian/{MAC}")
    assert [c for c in fake.calls[len(before):] if c.startswith("content")] == []



@pytest.mark.parametrize("url", [f"/choose/debian/{MAC}", f"/setclass/flatcar/etcd/{MAC}"])
def test_only_the_machine_itself_may_choose_what_it_boots(client: Client, fake: FakeStore,
                                                          url: str) -> None:
    fake.add_machine(MAC, ip=IP, os=None)
    fake.add_lease("192.0.2.151", "52:54:00:99:99:99")  # another machine on the network
    for source in ("192.0.2.151", "192.0.2.77", "198.51.100.9"):
        r = client.simulate_get(url, remote_addr=source)
        assert r.status_code == 403, r.text
        assert fake.reported[-1].stage == "http.refused"
        assert source in fake.reported[-1].detail
    assert fake.machines_by_mac[MAC].os is None and fake.changes == []
    r = client.simulate_get(url, remote_addr=f"::ffff:{IP}")  # a dual-stack socket's form
    assert r.status_code == 200
    assert [c.actor for c in fake.changes] == [f"menu@{IP}"]  # the plain IPv4 form


def test_self_service_can_be_turned_off(tmp_path: Path, data: Path, fake: FakeStore) -> None:
    config = make_config(tmp_path, data, http__self_service=False)
    client = Client(create_app(fake, config))
    assert client.simulate_get(f"/choose/debian/{MAC}").status_code == 403
    assert MAC not in fake.machines_by_mac
