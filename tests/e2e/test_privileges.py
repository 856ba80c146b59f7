"""Least privilege: services started as root give it up once their ports are bound,
and still answer DHCP, TFTP, HTTP and DNS as themselves."""

from __future__ import annotations

import pwd
import shutil
import time
from pathlib import Path

import psutil
import pytest

from astralboot.common.cli.demo.netns import Lab
from support.stack import Stack, write_config

pytestmark = pytest.mark.netns

BUNDLED = Path(__file__).resolve().parents[2] / "common" / "bundled"


def test_services_run_as_the_service_user_and_still_serve(lab: Lab, short_tmp: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    short_tmp.chmod(0o755)  # a private temporary folder would keep the user out of its own
    data = short_tmp / "data"
    shutil.copytree(BUNDLED, data)
    (data / "tftp" / "undionly.kpxe").write_bytes(b"\x55" * 70_000)
    (data / "boot/debian/images/linux").write_bytes(b"\x90" * 4096)
    (data / "boot/debian/images/initrd.gz").write_bytes(b"\x1f" * 4096)
    path = write_config(short_tmp, interface=lab.bridge, address=lab.server_address, data=data,
                        extra={"service.user": "nobody", "domain": "lab.example"})
    with Stack(path, services=("store", "dhcpd", "tftpd", "httpd", "dnsd"),
               netns=lab.server) as stack:
        for name, proc in stack.procs.items():
            uids = psutil.Process(proc.pid).uids()
            assert (uids.real, uids.effective, uids.saved) == (nobody.pw_uid,) * 3, name
            for child in psutil.Process(proc.pid).children(recursive=True):  # gunicorn workers
                assert child.uids().effective == nobody.pw_uid, (name, child.pid)
        # What they go on writing is theirs: the database, its journal, the cache.
        db = data / "astralboot.db"
        for owned in (db, db.with_name("astralboot.db-wal"), short_tmp / "cache"):
            assert owned.exists() and owned.stat().st_uid == nobody.pw_uid, owned
        assert (data / "boot").stat().st_uid == 0  # the boot files are left as they were

        host = lab.add_host("client")
        script = short_tmp / "udhcpc.sh"
        script.write_text(f'#!/bin/sh\n[ "$1" = bound ] && echo "$ip" > {short_tmp}/ip\nexit 0\n')
        script.chmod(0o755)
        host.ns.run(["udhcpc", "-i", host.ifname, "-f", "-q", "-n", "-t", "5", "-T", "2",
                     "-s", str(script)], timeout=60)
        ip = (short_tmp / "ip").read_text().strip()
        host.ns.ip("addr", "add", f"{ip}/24", "dev", host.ifname)
        got = short_tmp / "got.kpxe"
        host.ns.run(["tftp", lab.server_address, "-m", "binary", "-c", "get", "undionly.kpxe",
                     str(got)], timeout=60)
        assert got.read_bytes() == b"\x55" * 70_000
        menu = host.ns.run(["curl", "-sS", f"http://{lab.server_address}/choose"])
        assert menu.stdout.startswith("#!ipxe")
        # dnsd, as nobody on port 53, names the client by its lease.
        deadline = time.monotonic() + 15  # the zone follows the ACK's event within moments
        while not (name := host.ns.run(["dig", f"@{lab.server_address}", "+short", "-x",
                                        ip]).stdout.split()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(name) == 1 and name[0].endswith(".lab.example."), name
