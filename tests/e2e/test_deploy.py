"""Deployment files: systemd units verify cleanly, supervisord runs and revives services."""

from __future__ import annotations

import configparser
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from astralboot.common.config import Config, load
from astralboot.common.cli.datafolder import create as create_data_folder
from astralboot.common.cli.demo.boot import Timeline, boot_until
from astralboot.common.cli.demo.guest import Guest
from astralboot.common.cli.demo.netns import Lab
from support.stack import astralboot_argv, write_config

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "deploy" / "systemd"
SUPERVISORD = REPO / "deploy" / "supervisord" / "astralboot.conf"
SERVICES = ("store", "dhcpd", "tftpd", "httpd", "dnsd")
BINDS_PORTS = ("dhcpd", "tftpd", "dnsd")  # httpd's port 80 comes from its socket unit
NOBODY = pwd.getpwnam("nobody")


def units() -> list[Path]:
    return sorted(p for p in SYSTEMD.iterdir() if p.suffix in (".service", ".socket", ".target"))


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze is installed by run.sh"
    astralboot = Path(sys.executable).parent / "astralboot"
    for unit in units():
        text = unit.read_text().replace("/opt/astralboot/.venv/bin/astralboot", str(astralboot))
        (tmp_path / unit.name).write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no",
                           *[str(tmp_path / u.name) for u in units()]],
                          capture_output=True, text=True, cwd=tmp_path)
    # verify only warns about unknown keys; any output at all is a defect.
    assert proc.returncode == 0 and proc.stderr.strip() == "" and proc.stdout.strip() == "", \
        proc.stderr + proc.stdout


def _service(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(SYSTEMD / f"astralboot-{name}.service")
    return parser


def test_only_the_services_that_bind_low_ports_hold_capabilities() -> None:
    for name in SERVICES:
        service = _service(name)["Service"]
        caps = service.get("AmbientCapabilities", "").split()
        assert service["User"] == "astralboot", f"{name} must not run as root"
        assert service.get("NoNewPrivileges") == "yes"
        assert service.get("ProtectSystem") == "strict"
        assert service.get("Restart") == "on-failure"
        assert service.get("RestartPreventExitStatus") == "2"
        if name in BINDS_PORTS:
            assert "CAP_NET_BIND_SERVICE" in caps
        else:
            assert caps == [], f"{name} should need no capability"
        assert set(caps) <= set(service.get("CapabilityBoundingSet", "").split())
    socket = configparser.ConfigParser(strict=False, interpolation=None)
    socket.read(SYSTEMD / "astralboot-httpd.socket")
    assert socket["Socket"]["ListenStream"] == "80"
    target = (SYSTEMD / "astralboot.target").read_text()
    for name in SERVICES:
        assert f"astralboot-{name}.service" in target


def test_every_supervisord_program_runs_an_astralboot_service() -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(SUPERVISORD)
    programs = {s.split(":", 1)[1]: parser[s] for s in parser.sections()
                if s.startswith("program:")}
    assert set(programs) == set(SERVICES)
    for name, section in programs.items():
        assert re.search(rf"\s{name} -c ", section["command"])
        assert section["stdout_logfile"].endswith(f"{name}.log")
        if name == "dnsd":  # exits 0 when [dns] enabled = false: not restarted, not an error
            assert section["autorestart"] == "unexpected" and section["exitcodes"] == "0,2"
        else:
            assert section["autorestart"] == "true"
        assert int(programs["store"]["priority"]) <= int(section["priority"])
    assert int(programs["store"]["priority"]) < int(programs["dhcpd"]["priority"])


@pytest.mark.netns
@pytest.mark.qemu
def test_supervisord_runs_every_service_as_the_user_boots_a_machine_and_revives_a_killed_one(
        lab: Lab, short_tmp: Path) -> None:
    config = write_config(short_tmp, interface=lab.bridge, address=lab.server_address,
                          data=short_tmp / "data",
                          extra={"menu.default": "debian", "menu.timeout": 2})
    create_data_folder(short_tmp / "data")
    logs = short_tmp / "logs"
    logs.mkdir()
    # The service user owns its state, as on a real host (here: nobody).
    for path in [short_tmp, *short_tmp.rglob("*")]:
        if path != logs:
            os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    short_tmp.chmod(0o755)
    env = {**os.environ, "ASTRALBOOT": str(Path(sys.executable).parent / "astralboot"),
           "ASTRALBOOT_CONFIG": str(config), "ASTRALBOOT_LOGS": str(logs),
           "ASTRALBOOT_USER": "nobody", "ASTRALBOOT_GROUP": "nogroup"}
    supervisord = Path(sys.executable).parent / "supervisord"
    supervisorctl = [str(Path(sys.executable).parent / "supervisorctl"), "-c", str(SUPERVISORD)]
    proc = lab.server.popen([str(supervisord), "-c", str(SUPERVISORD)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        status = _wait_status(lab, config, ok=True)
        assert status.returncode == 0, status.stdout + status.stderr
        pids = _pids(status.stdout)
        for name, pid in pids.items():  # no program ever runs as root
            uids = psutil.Process(pid).uids()
            assert (uids.real, uids.effective, uids.saved) == (NOBODY.pw_uid,) * 3, name
        os.kill(pids["dhcpd"], signal.SIGKILL)
        status = _wait_status(lab, config, ok=True, changed_from=pids)
        assert status.returncode == 0
        new = _pids(status.stdout)
        assert new["dhcpd"] != pids["dhcpd"] and new["store"] == pids["store"]
        # supervisord calls a program RUNNING once it has stayed up for startsecs.
        deadline = time.monotonic() + 30
        while True:
            ctl = subprocess.run(supervisorctl + ["status"], env=env, capture_output=True,
                                 text=True)
            if ctl.stdout.count("RUNNING") == len(SERVICES) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert ctl.stdout.count("RUNNING") == len(SERVICES), ctl.stdout
        # A machine boots against the programs as supervisord runs them ...
        loaded = load(config)
        timeline = _boot_to_preseed(lab, short_tmp, loaded)
        stages = timeline.stages()
        assert "dhcp.ack" in stages and "http.image" in stages, stages
        # ... and dnsd, as nobody, knows it by name.
        ip = next(e.ip for e in timeline.events if e.stage == "dhcp.ack")
        ptr = lab.server.run(["dig", "@192.0.2.1", "+short", "-x", str(ip)]).stdout.split()
        assert len(ptr) == 1 and ptr[0].endswith(f".{loaded.dnsd.domain}."), ptr
        back = lab.server.run(["dig", "@192.0.2.1", "+short", ptr[0]]).stdout.split()
        assert back == [ip], back
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    down = lab.server.run(astralboot_argv("status", "-c", str(config), "--timeout", "1"),
                          check=False)
    assert down.returncode == 1


def _pids(table: str) -> dict[str, int]:
    out = {}
    for line in table.splitlines()[1:]:
        parts = line.split()
        if len(parts) > 2 and parts[2].isdigit():
            out[parts[0]] = int(parts[2])
    return out


def _wait_status(lab: Lab, config: Path, ok: bool,
                 changed_from: dict[str, int] | None = None,
                 timeout: float = 90) -> subprocess.CompletedProcess[str]:
    deadline = time.monotonic() + timeout
    while True:
        status = lab.server.run(astralboot_argv("status", "-c", str(config), "--timeout", "1"),
                                check=False)
        pids = _pids(status.stdout)
        fresh = changed_from is None or (pids.get("dhcpd") and pids["dhcpd"] != changed_from["dhcpd"])
        if (status.returncode == 0) == ok and fresh:
            return status
        if time.monotonic() > deadline:
            return status
        time.sleep(0.5)


@pytest.mark.netns
def test_httpd_takes_port_80_from_systemd_socket_activation(lab: Lab, short_tmp: Path) -> None:
    """The systemd setup: port 80 bound by astralboot-httpd.socket, not by httpd."""
    from support.stack import Stack
    config = write_config(short_tmp, interface=lab.bridge, address=lab.server_address,
                          data=short_tmp / "data", http_port=8081)
    create_data_folder(short_tmp / "data")
    with Stack(config, services=("store",), netns=lab.server):
        # As the socket unit does it: ListenStream=80, dual-stack (BindIPv6Only=both).
        httpd = lab.server.popen(["systemd-socket-activate", "-l", "80",
                                  *astralboot_argv("httpd", "-c", str(config))],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        try:
            # systemd-socket-activate listens first (as systemd would before any client).
            deadline = time.monotonic() + 30
            while not lab.server.run(["ss", "-Hltn", "sport = :80"]).stdout.strip():
                assert httpd.poll() is None and time.monotonic() < deadline, "never listened"
                time.sleep(0.1)
            # The first connection starts httpd; it waits in the socket's backlog meanwhile.
            health = lab.server.run(["curl", "-sS", "--max-time", "60",
                                     "http://192.0.2.1/api/health"], check=False)
            menu = lab.server.run(["curl", "-sS", "--max-time", "20",
                                   "http://192.0.2.1/choose"], check=False)
            own_port = lab.server.run(["curl", "-sS", "--max-time", "5",
                                       "http://192.0.2.1:8081/api/health"], check=False)
        finally:
            os.killpg(httpd.pid, signal.SIGTERM)
            httpd.wait(timeout=30)
    assert '"service": "httpd"' in health.stdout or '"service":"httpd"' in health.stdout, \
        health.stdout + health.stderr
    assert menu.stdout.startswith("#!ipxe")
    assert own_port.returncode != 0  # it did not bind a socket of its own


def _boot_to_preseed(lab: Lab, work: Path, config: Config) -> Timeline:
    """A diskless BIOS guest on the lab's bridge, power-on to its preseed fetch."""
    mac = "52:54:00:5e:00:01"
    guest = Guest(firmware="bios", mac=mac, tap=lab.add_tap(), workdir=work)
    return boot_until(guest, lab.server, config.bus.events, "http.template", 900)
