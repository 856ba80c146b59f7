"""``astralboot serve``: supervised children, restart, clean stop, clear start-up failures."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from astralboot.common.cli.datafolder import create as create_data_folder
from astralboot.common.cli.demo.netns import Lab
from support.stack import astralboot_argv, write_config


def _status(lab: Lab, config: Path) -> tuple[int, dict[str, int]]:
    proc = lab.server.run(astralboot_argv("status", "-c", str(config), "--timeout", "1"),
                          check=False)
    pids = {}
    for line in proc.stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) > 2 and parts[2].isdigit():
            pids[parts[0]] = int(parts[2])
    return proc.returncode, pids


def _wait(lab: Lab, config: Path, predicate, timeout: float = 90) -> dict[str, int]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        code, pids = _status(lab, config)
        if predicate(code, pids):
            return pids
        assert time.monotonic() < deadline, f"status never matched; last: {code} {pids}"
        time.sleep(0.3)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_serve_restarts_a_killed_child_and_stops_cleanly_on_sigterm(lab: Lab,
                                                                     short_tmp: Path) -> None:
    config = write_config(short_tmp, interface=lab.bridge, address=lab.server_address,
                          data=short_tmp / "data")
    create_data_folder(short_tmp / "data")
    serve = lab.server.popen(astralboot_argv("serve", "-c", str(config)),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        pids = _wait(lab, config, lambda code, p: code == 0)
        assert set(pids) == {"store", "dhcpd", "tftpd", "httpd", "dnsd"}
        os.kill(pids["tftpd"], signal.SIGKILL)
        after = _wait(lab, config, lambda code, p: code == 0 and p.get("tftpd") not in
                      (None, pids["tftpd"]))
        assert after["store"] == pids["store"] and after["dhcpd"] == pids["dhcpd"]

        os.kill(serve.pid, signal.SIGTERM)
        assert serve.wait(timeout=60) == 0
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
    output = serve.stdout.read().decode() if serve.stdout else ""
    assert "[tftpd]" in output and "restarting" in output and "all services stopped" in output
    assert not any(_alive(pid) for pid in after.values()), "a child outlived serve"
    assert _status(lab, config)[0] == 1


def test_serve_names_the_service_that_cannot_start(lab: Lab, short_tmp: Path) -> None:
    config = write_config(short_tmp, interface=lab.bridge, address=lab.server_address,
                          data=short_tmp / "data", http_port=8080)
    create_data_folder(short_tmp / "data")
    # Something else already listens on the HTTP port.
    squatter = lab.server.popen(["python3", "-c",
                                 "import socket,time; s=socket.socket(); "
                                 "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
                                 "s.bind(('0.0.0.0', 8080)); s.listen(); time.sleep(120)"])
    try:
        time.sleep(0.5)
        result = lab.server.run(astralboot_argv("serve", "-c", str(config)), check=False,
                                timeout=120)
    finally:
        squatter.kill()
        squatter.wait()
    assert result.returncode == 2
    assert "httpd cannot start" in result.stderr
    assert "in use" in result.stderr
    assert _status(lab, config)[0] == 1  # and nothing was left running
