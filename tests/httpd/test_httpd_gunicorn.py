"""httpd under real gunicorn with the real store, driven by curl.

Range, HEAD, ETag, 304 and Content-Length as a client sees them over a
socket (gunicorn's sendfile path), boot events and templates for a machine
holding a real lease, 503 when the store is gone, and start-up failures.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from httpd_support import BUNDLED, admin_token
from support.ports import free_port

from astralboot.common.bus.client import SyncBusClient
from astralboot.common.config import load
from support.stack import Stack, astralboot_argv, write_config
from astralboot.common.messages import (EventList, LeaseCommit, LeaseOffer, MachineSet,
                                        TokenList, TokenListReply, TokenRevoke)

INITRD = os.urandom(3 * 1024 * 1024 + 17)
SHA = hashlib.sha256(INITRD).hexdigest()
MAC = "52:54:00:aa:bb:01"
CLIENT = "127.0.0.150"  # curl --interface: loopback takes any 127/8 source address



def make_site(folder: Path, **extra: object) -> tuple[Path, int]:
    data = folder / "data"
    shutil.copytree(BUNDLED, data)
    (data / "boot/debian/images/linux").write_bytes(b"\x90" * 4096)
    (data / "boot/debian/images/initrd.gz").write_bytes(INITRD)
    port = free_port()
    config = write_config(folder, interface="lo", address="127.0.0.1", network="127.0.0.0/8",
                          range="127.0.0.100-127.0.0.199", data=data, http_port=port,
                          extra={"bus.deadline": 1.0, **extra})
    return config, port


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", "30", *args], capture_output=True,
                          timeout=60)


def headers(raw: bytes) -> tuple[int, dict[str, str]]:
    lines = raw.decode("latin-1").strip().split("\r\n")
    status = int(lines[0].split()[1])
    return status, {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[Stack, int, Path]]:
    folder = Path(tempfile.mkdtemp(prefix="ab-h-"))
    config, port = make_site(folder)
    try:
        with Stack(config, services=("store", "httpd")) as stack:
            yield stack, port, folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def url(port: int, path: str) -> str:
    return f"http://127.0.0.1:{port}{path}"


def test_whole_image_with_content_length_and_etag(site: tuple[Stack, int, Path]) -> None:
    _, port, folder = site
    out = folder / "whole"
    r = curl("-D", "-", "-o", str(out), url(port, "/image/debian/initrd.gz"))
    status, h = headers(r.stdout)
    assert status == 200
    assert h["content-length"] == str(len(INITRD))
    assert h["etag"] == f'"{SHA}"'
    assert hashlib.sha256(out.read_bytes()).hexdigest() == SHA


def test_head(site: tuple[Stack, int, Path]) -> None:
    _, port, _ = site
    r = curl("-I", url(port, "/image/debian/initrd.gz"))
    status, h = headers(r.stdout)
    assert status == 200
    assert h["content-length"] == str(len(INITRD))
    assert h["etag"] == f'"{SHA}"'
    assert h["accept-ranges"] == "bytes"


def test_range_is_206_with_exactly_those_bytes(site: tuple[Stack, int, Path]) -> None:
    _, port, folder = site
    out = folder / "piece"
    r = curl("-D", "-", "-r", "1000000-1000099", "-o", str(out),
             url(port, "/image/debian/initrd.gz"))
    status, h = headers(r.stdout)
    assert status == 206
    assert h["content-range"] == f"bytes 1000000-1000099/{len(INITRD)}"
    assert h["content-length"] == "100"
    assert out.read_bytes() == INITRD[1000000:1000100]


def test_interrupted_download_resumes_to_identical_bytes(site: tuple[Stack, int, Path]) -> None:
    _, port, folder = site
    part = folder / "resumed"
    part.write_bytes(INITRD[:1234567])
    r = curl("-C", "-", "-o", str(part), url(port, "/image/debian/initrd.gz"))
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(part.read_bytes()).hexdigest() == SHA


def test_range_past_the_end_is_416(site: tuple[Stack, int, Path]) -> None:
    _, port, _ = site
    r = curl("-D", "-", "-o", "/dev/null", "-r", f"{len(INITRD) + 5}-",
             url(port, "/image/debian/initrd.gz"))
    status, h = headers(r.stdout)
    assert status == 416
    assert h["content-range"] == f"bytes */{len(INITRD)}"


def test_if_none_match_is_304(site: tuple[Stack, int, Path]) -> None:
    _, port, _ = site
    r = curl("-D", "-", "-o", "/dev/null", "-H", f'If-None-Match: "{SHA}"',
             url(port, "/image/debian/initrd.gz"))
    assert headers(r.stdout)[0] == 304


def test_the_originals_rkt_and_spawn_links_are_410_with_the_reason(
        site: tuple[Stack, int, Path]) -> None:
    _, port, _ = site
    r = curl("-D", "-", url(port, "/spawn/unit/ipfs"))
    status, _ = headers(r.stdout)
    assert status == 410
    assert b"the spawn unit API is retired (fleet is archived upstream)" in r.stdout


def test_a_leased_machine_boots_and_every_stage_is_recorded(
        site: tuple[Stack, int, Path]) -> None:
    stack, port, _ = site
    config = load(stack.config)
    with SyncBusClient(config.bus.endpoint, deadline=3.0) as bus:
        bus.call(LeaseOffer(mac=MAC, subnet="127.0.0.0/8", requested_ip=CLIENT))
        bus.call(LeaseCommit(mac=MAC, subnet="127.0.0.0/8", ip=CLIENT, mode="select"))
        bus.call(MachineSet(mac=MAC, name="pxe1", os="debian"))
        script = curl("--interface", CLIENT, url(port, f"/boot/debian/{MAC}")).stdout.decode()
        assert "hostname=pxe1" in script
        assert f"kernel http://127.0.0.1:{port}/image/debian/linux" in script
        assert curl("--interface", CLIENT, "-o", "/dev/null",
                    url(port, "/image/debian/linux")).returncode == 0
        assert curl("--interface", CLIENT, "-o", "/dev/null",
                    url(port, "/image/debian/initrd.gz")).returncode == 0
        preseed = curl("--interface", CLIENT, url(port, "/action/debian/preseed")).stdout
        assert b"d-i netcfg/get_hostname string pxe1\n" in preseed
        # Events are sent without waiting; ask until the last one is in.
        stages: list[str] = []
        for _ in range(50):
            events = bus.call(EventList(mac=MAC)).events  # type: ignore[attr-defined]
            stages = [e.stage for e in events if e.service == "httpd"]
            if "http.template" in stages:
                break
            subprocess.run(["sleep", "0.1"])
        assert stages == ["http.script", "http.image", "http.image", "http.template"]


def test_metrics_add_up_over_all_workers(site: tuple[Stack, int, Path]) -> None:
    stack, port, _ = site
    token = admin_token(load(stack.config).bus.endpoint, scope="read")
    auth = f"Authorization: Bearer {token}"
    assert curl("-o", "/dev/null", "-w", "%{http_code}", url(port, "/metrics")).stdout == b"401"
    before = curl("-H", auth, url(port, "/metrics")).stdout.decode()

    def boots(text: str) -> int:
        for line in text.splitlines():
            if line.startswith('astralboot_http_requests_total{route="boot",status="200"}'):
                return int(line.split()[-1])
        return 0
    for _ in range(20):  # new connections land on either worker
        curl(url(port, f"/boot/debian/{MAC}"))
    assert boots(curl("-H", auth, url(port, "/metrics")).stdout.decode()) == boots(before) + 20


def test_store_down_is_503_with_retry_after_within_the_deadline(tmp_path: Path) -> None:
    folder = Path(tempfile.mkdtemp(prefix="ab-d-"))
    try:
        config, port = make_site(folder)
        with Stack(config, services=("store", "httpd")) as stack:
            stack.kill("store")
            r = curl("-D", "-", "-o", "/dev/null", "--max-time", "10",
                     url(port, "/boot/debian/52:54:00:aa:bb:02"))
            status, h = headers(r.stdout)
            assert status == 503
            assert h["retry-after"] == "5"
            r = curl("-D", "-", "-o", "/dev/null", url(port, "/api/health"))
            assert headers(r.stdout)[0] == 503
            status_cli = stack.cli("status", "--service", "httpd", check=False)
            assert status_cli.returncode != 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_port_in_use_fails_at_once_with_the_reason(tmp_path: Path) -> None:
    folder = Path(tempfile.mkdtemp(prefix="ab-p-"))
    try:
        config, port = make_site(folder)
        with socket.socket() as taken:
            taken.bind(("0.0.0.0", port))
            taken.listen()
            proc = subprocess.run(astralboot_argv("httpd", "-c", str(config)),
                                  capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2
        assert f"cannot listen on 0.0.0.0:{port}: address already in use" in proc.stderr
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_sigterm_stops_httpd_cleanly(tmp_path: Path) -> None:
    folder = Path(tempfile.mkdtemp(prefix="ab-t-"))
    try:
        config, port = make_site(folder)
        with Stack(config, services=("store", "httpd")) as stack:
            proc = stack.procs["httpd"]
            os.killpg(proc.pid, signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            assert curl(url(port, "/choose")).returncode != 0  # nothing listens any more
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_admin_routes_want_tokens_the_boot_routes_do_not(site: tuple[Stack, int, Path]) -> None:
    """Real gunicorn, real store: 401 without a token or with a revoked one, 403 for a
    read-only token on a write; the boot face answers anyone."""
    stack, port, _ = site
    endpoint = load(stack.config).bus.endpoint
    writer, reader = admin_token(endpoint), admin_token(endpoint, scope="read")

    def code(path: str, *args: str) -> str:
        out = curl("-o", "/dev/null", "-w", "%{http_code}", *args, url(port, path)).stdout
        return out.decode()
    admin = ["/api/machines", f"/api/machines/{MAC}", "/api/leases", "/api/events",
             "/api/content?path=boot", "/metrics"]
    for path in admin:
        assert code(path) == "401", path
        assert code(path, "-H", f"Authorization: Bearer {reader}") == "200", path
    body = ["-X", "PATCH", "-H", "Content-Type: application/json", "-d",
            '{"labels": {"a": "b"}}']
    assert code(f"/api/machines/{MAC}", *body) == "401"
    assert code(f"/api/machines/{MAC}", *body, "-H", f"Authorization: Bearer {reader}") == "403"
    assert code(f"/api/machines/{MAC}", *body, "-H", f"Authorization: Bearer {writer}") == "200"
    with SyncBusClient(endpoint, deadline=5) as bus:
        listed = bus.call(TokenList())
        assert isinstance(listed, TokenListReply)
        for token in listed.tokens:
            bus.call(TokenRevoke(name=token.name))
    assert code("/api/leases", "-H", f"Authorization: Bearer {writer}") == "401"
    for path in ("/choose", f"/boot/debian/{MAC}", "/image/debian/linux", "/api/health"):
        assert code(path) == "200", path
