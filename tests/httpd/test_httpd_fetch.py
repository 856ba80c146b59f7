"""`astralboot fetch <os>` against a local HTTP server standing in for upstream,
and `populate()` from the Debian packages installed here."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import subprocess
import tarfile
import threading
from functools import partial
from pathlib import Path
from typing import Iterator

import pytest

from httpd_support import BUNDLED

from astralboot.common.cli.images import parse_checksums, populate
from support.stack import astralboot_argv, write_config

DEBIAN_NETBOOT = Path("/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64")


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "upstream"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    shutil.copytree(BUNDLED, data)
    config = write_config(tmp_path / "etc", data=data, http_port=8080)
    return config, data


def run_fetch(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(astralboot_argv("fetch", *args, "--no-progress", "-c", str(config)),
                          capture_output=True, text=True, timeout=120)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_fetch_downloads_and_verifies_against_a_sha256sums_file(
        upstream: tuple[str, Path], site: tuple[Path, Path]) -> None:
    url, root = upstream
    config, data = site
    kernel, initrd = b"K" * 5000, b"I" * 70000
    (root / "netboot/debian-installer/amd64").mkdir(parents=True)
    (root / "netboot/debian-installer/amd64/linux").write_bytes(kernel)
    (root / "netboot/debian-installer/amd64/initrd.gz").write_bytes(initrd)
    (root / "SHA256SUMS").write_text(
        f"{sha(kernel)}  ./netboot/debian-installer/amd64/linux\n"
        f"{sha(initrd)}  ./netboot/debian-installer/amd64/initrd.gz\n")
    manifest = data / "boot/debian/images/sources.toml"
    text = manifest.read_text().replace(
        "https://deb.debian.org/debian/dists/bookworm/main/installer-amd64/current/images", url)
    manifest.write_text(text)
    r = run_fetch(config, "debian")
    assert r.returncode == 0, r.stderr
    assert (data / "boot/debian/images/linux").read_bytes() == kernel
    assert (data / "boot/debian/images/initrd.gz").read_bytes() == initrd
    assert "boot/debian/images/initrd.gz: downloaded and verified" in r.stdout
    again = run_fetch(config, "debian")
    assert "already there and verified" in again.stdout


def test_fetch_keeps_nothing_that_does_not_match_its_checksum(
        upstream: tuple[str, Path], site: tuple[Path, Path]) -> None:
    url, root = upstream
    config, data = site
    (root / "vmlinuz").write_bytes(b"tampered")
    (data / "boot/rocky/images/sources.toml").write_text(
        f'[[image]]\nname = "vmlinuz"\nurl = "{url}/vmlinuz"\nsha256 = "{sha(b"original")}"\n')
    r = run_fetch(config, "rocky")
    assert r.returncode == 1
    assert "expected" in r.stderr and "nothing was kept" in r.stderr
    assert not (data / "boot/rocky/images/vmlinuz").exists()
    assert [p.name for p in (data / "boot/rocky/images").iterdir()] == ["sources.toml"]


def test_fetch_unreachable_upstream_says_so(site: tuple[Path, Path]) -> None:
    config, data = site
    (data / "boot/rocky/images/sources.toml").write_text(
        '[[image]]\nname = "vmlinuz"\nurl = "http://127.0.0.1:9/vmlinuz"\nsha256 = "00"\n')
    r = run_fetch(config, "rocky")
    assert r.returncode == 1
    assert "http://127.0.0.1:9/vmlinuz: cannot download" in r.stderr


def test_fetch_takes_images_out_of_a_verified_archive_and_builds_the_overlay(
        upstream: tuple[str, Path], site: tuple[Path, Path], tmp_path: Path) -> None:
    url, root = upstream
    config, data = site
    staging = tmp_path / "staging"
    (staging / "boot").mkdir(parents=True)
    for name in ("vmlinuz-lts", "initramfs-lts", "modloop-lts"):
        (staging / "boot" / name).write_bytes(name.encode() * 100)
    archive = root / "alpine-netboot.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / "boot", arcname="boot")
    (root / "alpine-netboot.tar.gz.sha256").write_text(
        f"{sha(archive.read_bytes())}  alpine-netboot.tar.gz\n")
    manifest = data / "boot/alpine/images/sources.toml"
    text = manifest.read_text()
    text = text.replace("https://dl-cdn.alpinelinux.org/alpine/v3.20/releases/x86_64/"
                        "alpine-netboot-3.20.3-x86_64.tar.gz", f"{url}/alpine-netboot.tar.gz")
    manifest.write_text(text)
    r = run_fetch(config, "alpine")
    assert r.returncode == 0, r.stderr
    images = data / "boot/alpine/images"
    assert (images / "vmlinuz-lts").read_bytes() == b"vmlinuz-lts" * 100
    assert (images / "modloop-lts").read_bytes() == b"modloop-lts" * 100
    with tarfile.open(images / "astralboot.apkovl.tar.gz") as ovl:
        start = ovl.getmember("etc/local.d/astralboot.start")
        assert start.mode == 0o755
        assert ovl.getmember("etc/runlevels/default/local").linkname == "/etc/init.d/local"
        assert b"setup-alpine" in ovl.extractfile(start).read()  # type: ignore[union-attr]


@pytest.mark.parametrize("text,name,algorithm,expected", [
    ("aa" * 32 + "  ./netboot/linux\n", "./netboot/linux", "sha256", "aa" * 32),
    ("SHA256 (images/pxeboot/vmlinuz) = " + "bb" * 32, "images/pxeboot/vmlinuz", "sha256",
     "bb" * 32),
    ("[checksums]\nimages/pxeboot/initrd.img = sha256:" + "cc" * 32, "images/pxeboot/initrd.img",
     "sha256", "cc" * 32),
    ("# MD5 HASH\n" + "d" * 32 + "  f.gz\n# SHA512 HASH\n" + "e" * 128 + "  f.gz\n", "f.gz",
     "sha512", "e" * 128),
    ("ff" * 32 + " *x.iso\n", "x.iso", "sha256", "ff" * 32),
    ("ff" * 32 + "  x.iso\n", "y.iso", "sha256", None),
])
def test_checksum_file_formats(text: str, name: str, algorithm: str,
                               expected: str | None) -> None:
    assert parse_checksums(text, name, algorithm) == expected


def test_populate_copies_the_debian_installer_and_ipxe_loaders(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(BUNDLED, data)
    done = populate(data)
    linux = data / "boot/debian/images/linux"
    assert linux.read_bytes() == (DEBIAN_NETBOOT / "linux").read_bytes()
    assert (data / "boot/debian/images/initrd.gz").stat().st_size == \
        (DEBIAN_NETBOOT / "initrd.gz").stat().st_size
    for name in ("undionly.kpxe", "ipxe.efi", "snponly.efi"):
        assert (data / "tftp" / name).is_file()
    for name in ("ipxe.efi", "snponly.efi"):
        assert (data / "bin" / name).is_file()
    # Secure Boot: Debian's signed shim and GRUB, where GRUB's built-in prefix looks.
    for arch, names in (("amd64", ("bootnetx64.efi", "grubx64.efi")),
                        ("arm64", ("bootnetaa64.efi", "grubaa64.efi"))):
        package = Path(f"/usr/lib/debian-installer/images/12/{arch}/text/debian-installer/{arch}")
        for name in names:
            copied = data / "tftp" / "debian-installer" / arch / name
            assert copied.read_bytes() == (package / name).read_bytes(), copied
    assert any(line.startswith("boot/debian/images/linux: copied from") for line in done)
    assert all("already there" in line or "not copied" in line for line in populate(data))


def test_populate_says_what_is_not_installed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(BUNDLED, data)
    done = populate(data, ipxe=tmp_path / "no-ipxe")
    assert "tftp/undionly.kpxe: not copied" in "\n".join(done)
