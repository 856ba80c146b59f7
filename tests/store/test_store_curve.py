"""The bus between hosts: CURVE on tcp://, admitted keys only, each role its rights.

The store runs in the lab's server namespace on tcp://192.0.2.1; clients
run in a second namespace on the same bridge, with the key files an
operator would copy there. Real store, real sockets, real database.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from astralboot.common.bus import security
from astralboot.common.config import load
from astralboot.common.cli.demo.netns import Lab
from support.stack import Stack, astralboot_argv, write_config

from store_lab import write_store_config

pytestmark = pytest.mark.netns

PROBE = str(Path(__file__).with_name("bus_probe.py"))
ENDPOINT = "tcp://192.0.2.1:5555"
MAC_OK, MAC_TFTPD, MAC_STRANGER, MAC_NONE = (f"02:00:00:00:0c:0{i}" for i in range(1, 5))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(astralboot_argv(*args), capture_output=True, text=True, timeout=60)


def test_only_admitted_keys_reach_the_store_and_each_only_for_its_role(lab: Lab,
                                                                      short_tmp: Path) -> None:
    folder = short_tmp / "store"
    db = folder / "db" / "astralboot.db"
    path = write_store_config(folder, f"sqlite:///{db}", extra={"bus.endpoint": ENDPOINT})

    # A tcp:// bus without keys does not start, and says why.
    refused = subprocess.run(lab.server.argv(astralboot_argv("store", "-c", str(path))),
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "needs CURVE keys" in refused.stderr and "store.key" in refused.stderr

    assert cli("keys", "setup", "-c", str(path)).returncode == 0
    made = cli("keys", "create", "far-tftpd", "--role", "tftpd", "-c", str(path))
    assert made.returncode == 0, made.stderr
    keys = load(path).bus.keys
    far = lab.add_host("far", address="192.0.2.20/24")
    # What the operator copies to the other host.
    carried = short_tmp / "far-keys"
    carried.mkdir()
    shutil.copy(keys / "store.pub", carried / "store.pub")
    shutil.copy(keys / "admin.key", carried / "admin.key")
    shutil.copy(keys / "far-tftpd.key", carried / "tftpd.key")
    stranger = security.generate("stranger", "admin")
    security.write(carried / "stranger.key", stranger, with_secret=True)

    def probe(key: str, kind: str, mac: str = "") -> str:
        keyfile = "-" if key == "-" else str(carried / key)
        out = far.ns.run([sys.executable, PROBE, ENDPOINT, str(carried / "store.pub"), keyfile,
                          kind, mac], timeout=60).stdout
        reply = json.loads(out)
        return reply.get("code") or reply["reply"]

    with Stack(path, services=("store",), netns=lab.server):
        assert probe("admin.key", "health") == "ok.health"
        assert probe("admin.key", "machine.set", MAC_OK) == "ok.machine"
        assert probe("tftpd.key", "health") == "ok.health"
        assert probe("tftpd.key", "machine.set", MAC_TFTPD) == "forbidden"
        assert probe("stranger.key", "machine.set", MAC_STRANGER) == "timeout"
        # A real front end on the far host, with the key the operator copied:
        # it boots a machine from the store's record over the encrypted bus.
        shutil.copy(keys / "httpd.key", carried / "httpd.key")
        web = write_config(short_tmp / "web", interface="eth0", address="192.0.2.20",
                           data=short_tmp / "web" / "unused", http_port=8080,
                           extra={"bus.endpoint": ENDPOINT, "bus.keys": str(carried),
                                  "store.cache": str(short_tmp / "web" / "cache")})
        with Stack(web, services=("httpd",), netns=far.ns):
            script = far.ns.run(["curl", "-sS", f"http://192.0.2.20:8080/boot/debian/{MAC_OK}"])
            assert script.stdout == "#!ipxe\necho probe-set\n"  # the store's template, its record
        assert probe("-", "machine.set", MAC_NONE) == "timeout"
        # A revoked key stops at its next connection.
        assert cli("keys", "revoke", "far-tftpd", "-c", str(path)).returncode == 0
        assert probe("tftpd.key", "health") == "timeout"
        listed = cli("keys", "list", "-c", str(path)).stdout
        assert "far-tftpd" not in listed and "admin" in listed

    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        macs = {row[0] for row in conn.execute(sa.text("SELECT mac FROM machines"))}
    engine.dispose()
    assert macs == {MAC_OK}  # nobody else changed anything
