"""Upgrading in place: the previous release's wheel, then this tree's, in one venv.

The previous release (0.2.0, commit 86b983e: schema 0002) is built from git
history into a wheel and installed into a fresh venv, as an operator's
/opt/astralboot would hold it; its store hands out leases and records
machines. Then this tree's wheel is installed over it (pip upgrade), the
store restarts, migrates the schema (0003: admin tokens, 0004: each
machine's loader) and must still hold every lease and machine. On SQLite
and on PostgreSQL.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa

from astralboot.common.bus.client import SyncBusClient
from astralboot.common.config import load
from astralboot.common.errors import BusError
from astralboot.services.store.database import SCHEMA_HEAD
from astralboot.common.messages import (Health, HealthReply, LeaseCommit, LeaseGrant,
                                        LeaseLookup, LeaseOffer, LeaseReply, MachineGet,
                                        MachineReply, MachineSet, TokenList, TokenListReply)
from support.postgres import scratch_database
from support.stack import write_config

REPO = Path(__file__).resolve().parents[2]
PREVIOUS = "86b983e"  # release 0.2.0: the last commit with schema 0002 at its head
MACHINES = 40


def _run(*cmd: str, cwd: Path | None = None, timeout: float = 600) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """The previous release's wheel and this tree's."""
    work = tmp_path_factory.mktemp("wheels")
    old_tree = work / "previous"
    _run("git", "worktree", "add", "--detach", str(old_tree), PREVIOUS, cwd=REPO)
    try:
        _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
             str(work / "old"), str(old_tree))
        _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
             str(work / "new"), str(REPO))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=REPO,
                       capture_output=True)
    old = next((work / "old").glob("astralboot-*.whl"))
    new = next((work / "new").glob("astralboot-*.whl"))
    assert "0.2.0" in old.name and "0.3.0" in new.name
    yield old, new


class Store:
    """``astralboot store`` from an installed venv, as the unit's ExecStart runs it."""

    def __init__(self, venv: Path, config: Path, log: Path) -> None:
        self.argv = [str(venv / "bin" / "astralboot"), "store", "-c", str(config)]
        self.endpoint = load(config).bus.endpoint
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "Store":
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                with SyncBusClient(self.endpoint, deadline=1, retries=0) as bus:
                    if isinstance(bus.request(Health()), HealthReply):
                        return self
            except BusError:
                pass
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=60) == 0, self.log.read_text()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_an_upgrade_in_place_keeps_every_lease_and_machine(
        wheels: tuple[Path, Path], short_tmp: Path, backend: str) -> None:
    old, new = wheels
    venv = short_tmp / "venv"
    _run("/usr/bin/python3", "-m", "venv", str(venv))
    _run(str(venv / "bin" / "pip"), "install", "-q", str(old))
    if backend == "sqlite":
        context = None
        database = f"sqlite:///{short_tmp / 'db' / 'astralboot.db'}"
    else:
        context = scratch_database("astralboot_upgrade")
        database = context.__enter__()
    try:
        config = write_config(short_tmp, interface="lo", address="192.0.2.1",
                              data=short_tmp / "data",
                              extra={"store.database": database, "log_level": "info"})
        (short_tmp / "data").mkdir()
        log = short_tmp / "store.log"
        subnet = load(config).dhcp.local.name
        macs = [f"02:00:00:00:aa:{i:02x}" for i in range(MACHINES)]
        bound: dict[str, str] = {}
        with Store(venv, config, log) as store:
            with SyncBusClient(store.endpoint, deadline=5) as bus:
                for i, mac in enumerate(macs):
                    offered = bus.call(LeaseOffer(mac=mac, subnet=subnet))
                    assert isinstance(offered, LeaseGrant)
                    grant = bus.call(LeaseCommit(mac=mac, subnet=subnet, ip=offered.ip,
                                                 mode="select"))
                    assert isinstance(grant, LeaseGrant)
                    bound[mac] = grant.ip
                    if i % 2:
                        bus.call(MachineSet(mac=mac, name=f"kept-{i}", os="debian",
                                            labels={"rack": str(i)}))
        _run(str(venv / "bin" / "pip"), "install", "-q", "--upgrade", str(new))
        version = subprocess.run([str(venv / "bin" / "astralboot"), "--version"],
                                 capture_output=True, text=True).stdout
        assert "0.3.0" in version
        with Store(venv, config, log) as store:
            with SyncBusClient(store.endpoint, deadline=5) as bus:
                for i, mac in enumerate(macs):
                    lease = bus.call(LeaseLookup(mac=mac))
                    assert isinstance(lease, LeaseReply)
                    assert (lease.lease.ip, lease.lease.state) == (bound[mac], "bound")
                    machine = bus.call(MachineGet(mac=mac))
                    assert isinstance(machine, MachineReply)
                    if i % 2:
                        assert (machine.machine.name, machine.machine.os,
                                machine.machine.labels) == (f"kept-{i}", "debian",
                                                            {"rack": str(i)})
                        assert machine.machine.loader is None  # the default, until set
                tokens = bus.call(TokenList())  # the new schema's table is there
                assert isinstance(tokens, TokenListReply) and tokens.tokens == ()
        engine = sa.create_engine(database)
        with engine.connect() as conn:
            head = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
            rows = conn.execute(sa.text("SELECT count(*) FROM leases")).scalar()
        engine.dispose()
        assert head == SCHEMA_HEAD == "0004" and rows == MACHINES
        assert "Traceback" not in log.read_text()
    finally:
        if context is not None:
            context.__exit__(None, None, None)
        shutil.rmtree(venv, ignore_errors=True)
