"""A Debian 12 container with systemd as PID 1 boots inside the lab's server namespace."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from astralboot.common.cli.demo.netns import Lab

from container import SystemdContainer, debian_root, root_folder

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.netns

# One connection, one greeting: proof that a process in the container reached the host.
GREETER = """
import socket
server = socket.create_server(("192.0.2.10", 7000))
print("listening", flush=True)
conn, _ = server.accept()
conn.sendall(b"hello from the client namespace")
conn.close()
"""

CONNECT = """
import socket
with socket.create_connection(("192.0.2.10", 7000), timeout=10) as s:
    print(s.recv(100).decode())
"""


def test_systemd_boots_in_the_lab_server_namespace(lab: Lab) -> None:
    assert shutil.which("mmdebstrap") and shutil.which("systemd-nspawn"), \
        "run.sh installs mmdebstrap and systemd-container"
    cold = not root_folder().exists()
    start = time.monotonic()
    root = debian_root()
    build = time.monotonic() - start
    client = lab.add_host("client", "192.0.2.10/24")
    greeter = client.ns.popen([sys.executable, "-c", GREETER], stdout=subprocess.PIPE, text=True)
    try:
        assert greeter.stdout is not None and greeter.stdout.readline().strip() == "listening"
        with SystemdContainer(root, lab.server, binds={REPO: "/src"}) as box:
            print(f"\nroot {root}: {'built' if cold else 'cached'} in {build:.1f}s; "
                  f"copy (overlay) {box.copy_seconds * 1000:.0f} ms; "
                  f"boot to running {box.boot_seconds:.2f}s")
            state = box.run(["systemctl", "is-system-running"], check=False).stdout.strip()
            if state == "degraded":
                print(box.run(["systemctl", "--failed", "--no-legend"]).stdout)
            assert state in ("running", "degraded")
            assert box.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"

            addresses = box.run(["ip", "-o", "-4", "addr", "show", "dev", "br0"])
            assert "192.0.2.1/24" in addresses.stdout

            box.run(["python3", "-m", "venv", "/opt/astralboot/.venv"])
            prefix = box.run(["/opt/astralboot/.venv/bin/python", "-c",
                              "import sys; print(sys.prefix)"])
            assert prefix.stdout.strip() == "/opt/astralboot/.venv"
            box.run(["test", "-f", "/src/pyproject.toml"])  # the repository, for its wheel
            assert box.run(["touch", "/src/pyproject.toml"], check=False).returncode != 0

            ping = box.run(["ping", "-c", "1", "-W", "5", "192.0.2.10"], check=False)
            assert ping.returncode == 0, ping.stdout + ping.stderr
            # As a unit of the container's systemd, not only through nsenter.
            reply = box.run(["systemd-run", "--wait", "--pipe", "--quiet",
                             "/usr/bin/python3", "-c", CONNECT])
            assert reply.stdout.strip() == "hello from the client namespace"
        assert not (root / "opt" / "astralboot").exists(), "the cached root must stay untouched"
    finally:
        greeter.kill()
        greeter.wait()
