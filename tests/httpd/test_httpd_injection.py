"""Strings from clients can never add an iPXE command, a kernel word or a config line."""

from __future__ import annotations

from pathlib import Path

import pytest

from httpd_support import IP, MAC, Client
from httpd_fakes import FakeStore

from astralboot.services.httpd.scripts import ipxe_word

HOSTILE_NAMES = [
    "a\nchain http://x/",
    "x ${net0/next-server}",
    "${shell}",
    "#!ipxe\nshell",
    "a\r\nkernel http://evil/linux",
    "a init=/bin/sh",
    "a\" ; reboot #",
    "a`id`$(id)",
]


def _commands(script: str) -> list[str]:
    return [line.split()[0] for line in script.splitlines() if line.strip()]


@pytest.mark.parametrize("hostname", HOSTILE_NAMES)
def test_hostile_dhcp_hostname_cannot_reach_a_script_or_a_preseed(
        client: Client, fake: FakeStore, data: Path, hostname: str) -> None:
    # A start template that (unwisely) puts the DHCP host name on the kernel line.
    start = data / "boot/debian/template/start.tmpl"
    start.write_text(start.read_text().replace("hostname={{ name }}",
                                               "hostname={{ lease.hostname }}"))
    fake.add_machine(MAC, ip=IP, hostname=hostname)
    script = client.simulate_get(f"/boot/debian/{MAC}").text
    assert _commands(script) == ["#!ipxe", "#", "#", "kernel", "initrd", "boot"]
    kernel = next(line for line in script.splitlines() if line.startswith("kernel "))
    word = next(w for w in kernel.split() if w.startswith("hostname="))
    assert all(c.isalnum() or c in "-=." for c in word)
    assert "init=/bin/sh" not in kernel.split()
    assert "${" not in kernel and "http://x/" not in kernel

    preseed = client.simulate_get("/action/debian/preseed").text
    assert not any(line.startswith(("chain", "kernel", "shell", "#!ipxe"))
                   for line in preseed.splitlines())


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_machine_name_is_sanitised_everywhere(client: Client, fake: FakeStore,
                                                      name: str) -> None:
    # Names set through the API are validated; an imported machines.json may hold anything.
    fake.add_machine(MAC, ip=IP, name=name, os="debian")
    script = client.simulate_get(f"/boot/debian/{MAC}").text
    assert len(script.splitlines()) == 6
    assert "${" not in script.split("kernel", 1)[1].split("\n", 1)[0]
    preseed = client.simulate_get("/action/debian/preseed").text
    line = next(x for x in preseed.splitlines() if x.startswith("d-i netcfg/get_hostname"))
    assert line.split(" ", 3)[3].replace("-", "").isalnum()


def test_option_strings_in_labels_are_inert(client: Client, fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP, os="debian",
                     labels={"mirror": "#!ipxe\nchain http://x/ ${root}"})
    preseed = client.simulate_get("/action/debian/preseed").text
    line = next(x for x in preseed.splitlines() if x.startswith("d-i mirror/http/hostname"))
    assert line == "d-i mirror/http/hostname string _ipxe_chain_http://x/_root_"
    assert not any(x.startswith("chain") for x in preseed.splitlines())


def test_every_value_in_an_ipxe_template_is_one_word(client: Client, fake: FakeStore,
                                                     data: Path) -> None:
    (data / "boot/debian/template/start.tmpl").write_text(
        "#!ipxe\nkernel {{ image_url }}/linux x={{ literal }}\nboot\n".replace(
            "{{ literal }}", "{{ 'a b\\nchain http://x/ ${y}' }}"))
    script = client.simulate_get(f"/boot/debian/{MAC}").text
    assert script.splitlines()[1] == \
        "kernel http://192.0.2.1:8080/image/debian/linux x=a%20b%0Achain%20http://x/%20%24%7By%7D"


def test_raw_lets_a_template_author_write_script_text(client: Client, data: Path) -> None:
    (data / "boot/debian/template/start.tmpl").write_text(
        "#!ipxe\n{{ 'echo hello world'|raw }}\nboot\n")
    assert "\necho hello world\n" in client.simulate_get(f"/boot/debian/{MAC}").text


@pytest.mark.parametrize("bad", ["52:54:00:12:34", "52:54:00:12:34:5g", "x", "52:54:00:12:34:56:78",
                                 "52:54:00:12:34:56%0Achain", "%24%7Bmac%7D", "..%2F..%2Fetc"])
def test_bad_macs_in_urls_are_rejected_and_change_nothing(client: Client, fake: FakeStore,
                                                          bad: str) -> None:
    for url in (f"/boot/debian/{bad}", f"/choose/debian/{bad}", f"/class/flatcar/{bad}",
                f"/setclass/flatcar/etcd/{bad}"):
        r = client.simulate_get(url)
        assert r.status_code in (400, 404), url
    assert fake.machines_by_mac == {}
    assert fake.reported == []


@pytest.mark.parametrize("bad", ["../../etc/passwd", "..", "a/../../x", "%2e%2e/x", "a//b"])
def test_image_paths_cannot_leave_the_images_folder(client: Client, bad: str) -> None:
    r = client.simulate_get(f"/image/debian/{bad}")
    assert r.status_code in (400, 404)
    assert b"root:" not in r.content


def test_bad_os_and_template_names_are_rejected(client: Client, fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP)
    assert client.simulate_get("/action/..%2Fdebian/preseed").status_code in (400, 404)
    assert client.simulate_get("/action/debian/..preseed").status_code == 400
    assert client.simulate_get(f"/boot/.hidden/{MAC}").status_code == 400


def test_ipxe_word_percent_encodes_everything_unusual() -> None:
    assert ipxe_word("http://192.0.2.1:8080/a?b=c&d") == "http://192.0.2.1:8080/a?b=c&d"
    assert ipxe_word("a b") == "a%20b"
    assert ipxe_word("${x}") == "%24%7Bx%7D"
    assert ipxe_word("#!ipxe") == "%23%21ipxe"
    assert ipxe_word("é") == "%C3%A9"
