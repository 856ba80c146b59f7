"""Scripts right for BIOS and UEFI: the kernel line names its initrds; local boot branches."""

from __future__ import annotations

from pathlib import Path

from httpd_support import IP, MAC, Client
from httpd_fakes import FakeStore

from astralboot.services.httpd.scripts import LOCAL_BOOT, name_initrds

OSES = ("alpine", "debian", "debian-arm64", "flatcar", "rocky", "ubuntu")


def _initrd_names(script: str) -> list[str]:
    names = []
    for line in script.splitlines():
        if line.startswith("initrd "):
            names.append(line.split()[1].rstrip("/").rsplit("/", 1)[-1])
    return names


def test_every_bundled_kernel_line_names_its_initrd_for_the_efi_stub(client: Client,
                                                                     fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP)
    for os in OSES:
        script = client.simulate_get(f"/boot/{os}/{MAC}").text
        kernel = next(line for line in script.splitlines() if line.startswith("kernel "))
        names = _initrd_names(script)
        assert names, os
        for name in names:
            assert f"initrd={name}" in kernel.split(), (os, kernel)


def test_a_template_without_initrd_names_gets_them(client: Client, data: Path) -> None:
    (data / "boot/debian/template/start.tmpl").write_text(
        "#!ipxe\nkernel {{ image_url }}/linux quiet\n"
        "initrd {{ image_url }}/initrd.gz\ninitrd --name extra.cpio {{ image_url }}/x.cpio\nboot\n")
    script = client.simulate_get(f"/boot/debian/{MAC}").text
    assert "linux quiet initrd=initrd.gz initrd=extra.cpio\n" in script


def test_initrd_names_already_given_are_not_repeated() -> None:
    script = "#!ipxe\nkernel http://s/linux initrd=initrd.gz\ninitrd http://s/initrd.gz\nboot\n"
    assert name_initrds(script) == script


def test_each_kernel_gets_only_its_own_initrds() -> None:
    script = ("#!ipxe\niseq ${platform} efi && goto efi ||\nkernel http://s/bios\n"
              "initrd http://s/a.img\nboot\n:efi\nkernel http://s/efi\ninitrd http://s/b.img?x=1\n"
              "boot\n")
    out = name_initrds(script).splitlines()
    assert out[2] == "kernel http://s/bios initrd=a.img"
    assert out[6] == "kernel http://s/efi initrd=b.img"


def test_local_disk_boot_exits_to_firmware_under_uefi_and_sanboots_under_bios() -> None:
    assert "iseq ${platform} efi && exit 1 ||" in LOCAL_BOOT
    assert "sanboot --no-describe --drive 0x80" in LOCAL_BOOT


def test_uefi_http_boot_loader_is_served_from_bin(client: Client, fake: FakeStore) -> None:
    r = client.simulate_get("/bin/ipxe.efi")
    assert r.status_code == 200
    assert r.content == b"MZ fake efi"
    assert r.headers["content-type"] == "application/efi"


def test_start_template_that_is_not_an_ipxe_script_is_an_error(client: Client,
                                                               data: Path) -> None:
    (data / "boot/debian/template/start.tmpl").write_text("kernel http://x/linux\n")
    r = client.simulate_get(f"/boot/debian/{MAC}")
    assert r.status_code == 500
    assert "#!ipxe" in r.text
