"""The admin face on a listener of its own, with mutual TLS (real gunicorn, real
store, curl with and without a client certificate)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from astralboot.common.config import load
from support.stack import Stack
from httpd_support import admin_token
from support.ports import free_port
from test_httpd_gunicorn import make_site


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(folder: Path) -> None:
    """A CA, a server certificate for 127.0.0.1, and a client certificate it signed."""
    folder.mkdir(parents=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=astralboot test CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=folder)
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, cn, ext in (("server", "127.0.0.1", ["-extfile", "san.cnf"]),
                          ("client", "operator", [])):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=folder)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", *ext, cwd=folder)
    # A certificate from a CA nobody trusts.
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=stranger", "-keyout", "stranger.key", "-out", "stranger.pem", cwd=folder)


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[int, int, Path, str]]:
    folder = Path(tempfile.mkdtemp(prefix="ab-tls-"))
    try:
        pki = folder / "pki"
        make_pki(pki)
        admin_port = free_port()
        config, port = make_site(folder / "site", **{
            "admin.port": admin_port, "admin.tls_cert": str(pki / "server.pem"),
            "admin.tls_key": str(pki / "server.key"), "admin.client_ca": str(pki / "ca.pem"),
            "admin.boot_face": False})
        with Stack(config, services=("store", "httpd")):
            token = admin_token(load(config).bus.endpoint)
            yield port, admin_port, pki, token
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "20", "-o", "/dev/null",
                           "-w", "%{http_code}", *args], capture_output=True, text=True,
                          timeout=60)


def test_the_admin_face_wants_a_client_certificate_and_a_token(
        site: tuple[int, int, Path, str]) -> None:
    _, admin_port, pki, token = site
    url = f"https://127.0.0.1:{admin_port}/api/leases"
    trust = ["--cacert", str(pki / "ca.pem")]
    mine = ["--cert", str(pki / "client.pem"), "--key", str(pki / "client.key")]
    auth = ["-H", f"Authorization: Bearer {token}"]
    assert curl(*trust, *mine, *auth, url).stdout == "200"
    assert curl(*trust, *mine, url).stdout == "401"  # the certificate alone is not enough
    no_cert = curl(*trust, *auth, url)
    assert no_cert.returncode != 0 and no_cert.stdout == "000"  # no TLS session at all
    strange = curl(*trust, "--cert", str(pki / "stranger.pem"), "--key",
                   str(pki / "stranger.key"), *auth, url)
    assert strange.returncode != 0 and strange.stdout == "000"
    plain = curl(*auth, f"http://127.0.0.1:{admin_port}/api/leases")
    assert plain.stdout != "200"
    # Only the admin face is there.
    assert curl(*trust, *mine, f"https://127.0.0.1:{admin_port}/choose").stdout == "404"
    assert curl(*trust, *mine, f"https://127.0.0.1:{admin_port}/api/health").stdout == "200"


def test_the_boot_listener_keeps_the_boot_face_only(site: tuple[int, int, Path, str]) -> None:
    port, _, _, token = site
    assert curl("-H", f"Authorization: Bearer {token}",
                f"http://127.0.0.1:{port}/api/leases").stdout == "404"
    assert curl(f"http://127.0.0.1:{port}/choose").stdout == "200"
    assert curl(f"http://127.0.0.1:{port}/api/health").stdout == "200"
