"""The systemd deployment, as shipped, under a real systemd, booting a real machine.

A Debian 12 container with systemd as PID 1 joins the lab's server
namespace (it owns br0 at 192.0.2.1). Inside it the README's install recipe
runs line by line, with three substitutions a test needs: no apt-get (the
container has no network; the iPXE and installer files are bound in from
this host's packages, the rest is in the root), the wheel and its
dependencies from a local wheelhouse, and init's answers as flags. Then a
QEMU BIOS guest on br0 boots to its preseed against the services as systemd
runs them; the store is killed with SIGKILL and systemd brings it back with
every record; the upgrade and uninstall recipes run too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from astralboot.common import __version__
from astralboot.common.cli.demo.guest import Guest, stop
from astralboot.common.cli.demo.netns import Lab

from container import SystemdContainer, debian_root

pytestmark = [pytest.mark.netns, pytest.mark.qemu]

REPO = Path(__file__).resolve().parents[2]
ASTRALBOOT = "/opt/astralboot/.venv/bin/astralboot"
CONFIG = "/etc/astralboot/config.toml"
UNITS = ("astralboot-store", "astralboot-dhcpd", "astralboot-tftpd", "astralboot-httpd",
         "astralboot-dnsd")
BOOT_TIMEOUT = 900


def recipe(name: str) -> list[str]:
    """The command lines of the README's ``<!-- recipe: NAME -->`` block."""
    text = (REPO / "README.md").read_text()
    block = re.search(rf"<!-- recipe: {name} -->\n```sh\n(.*?)```", text, re.S)
    assert block, f"README has no recipe {name}"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def adapted(line: str, mac: str) -> str:
    """A recipe line as it runs here (see the module docstring)."""
    wheel = f"./astralboot-{__version__}-py3-none-any.whl"
    if line.startswith("apt-get install"):
        return "test -x /usr/bin/python3 && test -d /usr/lib/ipxe && test -d /usr/lib/debian-installer"
    if wheel in line:
        return line.replace(wheel, "--no-index --find-links /wheels astralboot")
    if line.endswith("astralboot init --system"):
        return (f"{line} --non-interactive --interface br0 --address 192.0.2.1 "
                "--range 192.0.2.100-192.0.2.199 --no-ipfs --menu-default debian")
    return line


def wheelhouse(folder: Path) -> Path:
    """This tree's wheel and every dependency's, built on this host (it has the network)."""
    source = folder / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "node_modules", "__pycache__", "build", "*.egg-info"))
    wheels = folder / "wheels"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheels),
                           str(source)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    return wheels


def test_the_shipped_systemd_units_boot_a_machine(lab: Lab, short_tmp: Path) -> None:
    assert f"astralboot-{__version__}-py3-none-any.whl" in (REPO / "README.md").read_text(), \
        "the README's recipe names this release's wheel"
    wheels = wheelhouse(short_tmp)
    tap = lab.add_tap()
    mac = "52:54:00:5d:00:01"
    binds = {REPO: "/src", wheels: "/wheels", "/usr/lib/ipxe": "/usr/lib/ipxe",
             "/usr/lib/debian-installer": "/usr/lib/debian-installer"}
    with SystemdContainer(debian_root(), lab.server, binds=binds) as box:
        def sh(line: str, check: bool = True) -> subprocess.CompletedProcess[str]:
            return box.run(["sh", "-c", f"cd /src && {line}"], check=check, timeout=300)

        for line in recipe("install"):  # its status --wait line fails unless all five are up
            done = sh(adapted(line, mac), check=False)
            assert done.returncode == 0, f"{line}\n{done.stdout}{done.stderr}" + box.run(
                ["journalctl", "-u", "astralboot-*", "--no-pager", "-n", "80"]).stdout
        # The services run as the unit says: as astralboot, never root.
        for unit in UNITS:
            pid = box.run(["systemctl", "show", "-p", "MainPID", "--value", unit]).stdout.strip()
            user = box.run(["ps", "-o", "user=", "-p", pid]).stdout.strip()
            assert user == "astralboot", (unit, user)

        guest = Guest(firmware="bios", mac=mac, tap=tap, workdir=short_tmp)
        proc = guest.start(lab.server)
        try:
            stages = _wait_for(box, mac, "http.template", BOOT_TIMEOUT,
                               alive=lambda: proc.poll() is None, console=guest.console_tail)
        finally:
            stop(proc)
        assert _in_order(stages, ["dhcp.ack", "http.script", "http.image", "http.image",
                                  "dhcp.ack", "http.template"]), stages

        # kill -9 the store: systemd restarts it, and it answers with every record.
        before = box.run(["systemctl", "show", "-p", "NRestarts", "--value",
                          "astralboot-store"]).stdout.strip()
        box.run(["systemctl", "kill", "-s", "KILL", "astralboot-store"])
        deadline = time.monotonic() + 60
        while True:
            restarts = box.run(["systemctl", "show", "-p", "NRestarts", "--value",
                                "astralboot-store"]).stdout.strip()
            active = box.run(["systemctl", "is-active", "astralboot-store"],
                             check=False).stdout.strip()
            if restarts != before and active == "active":
                break
            assert time.monotonic() < deadline, (restarts, active)
            time.sleep(0.5)
        client = lab.add_host("after")
        client.ns.ip("addr", "add", "192.0.2.50/24", "dev", client.ifname)
        script = ""
        deadline = time.monotonic() + 30
        while "Booting from local disk" not in script and time.monotonic() < deadline:
            script = client.ns.run(["curl", "-sS", "--max-time", "5",
                                    f"http://192.0.2.1/boot/debian/{mac}"], check=False).stdout
            time.sleep(0.5)
        # Its install done, the machine's next boot is its disk: the store kept that.
        assert "Booting from local disk" in script, script
        # dnsd, as its unit runs it, gives the machine's address a name and back.
        ip = next(str(e["ip"]) for e in _events(box, mac) if e["stage"] == "dhcp.ack")
        ptr = client.ns.run(["dig", "@192.0.2.1", "+short", "-x", ip]).stdout.split()
        assert len(ptr) == 1 and ptr[0].endswith(".astral.lan."), ptr
        assert client.ns.run(["dig", "@192.0.2.1", "+short", ptr[0]]).stdout.split() == [ip]

        scores = {}
        for unit in UNITS:
            text = box.run(["systemd-analyze", "security", "--no-pager", f"{unit}.service"],
                           check=False).stdout
            found = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", text)
            assert found, text[-500:]
            scores[unit] = (float(found.group(1)), found.group(2))
        print("\nsystemd-analyze security: " + ", ".join(
            f"{u} {s:.1f} {w}" for u, (s, w) in scores.items()))
        assert all(score < 5.0 for score, _ in scores.values()), scores  # all "OK" or better

        for line in recipe("upgrade"):
            sh(adapted(line, mac))
        for line in recipe("uninstall"):
            sh(adapted(line, mac))
        left = box.run(["systemctl", "list-units", "--all", "--no-legend", "astralboot*"]).stdout
        assert "running" not in left, left
        assert box.run(["test", "-e", "/opt/astralboot"], check=False).returncode != 0


def _events(box: SystemdContainer, mac: str) -> list[dict[str, object]]:
    out = box.run(["sh", "-c", f"{ASTRALBOOT} events --json --mac {mac} -c {CONFIG}"],
                  check=False).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _wait_for(box: SystemdContainer, mac: str, stage: str, timeout: float, alive, console
              ) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        stages = [str(e["stage"]) for e in _events(box, mac)]
        if stage in stages:
            return stages
        if not alive() or time.monotonic() > deadline:
            raise AssertionError(f"no {stage}; stages {stages}\n--- console ---\n{console()}\n"
                                 + box.run(["journalctl", "-u", "astralboot-*", "--no-pager",
                                            "-n", "60"]).stdout)
        time.sleep(2)


def _in_order(stages: list[str], expected: list[str]) -> bool:
    it = iter(stages)
    return all(any(s == e for s in it) for e in expected)
