"""kill -9 of the store during 2,000 DORA/s of perfdhcp, on SQLite and on
PostgreSQL: every address perfdhcp saw ACKed is in the database for that
client, no address is bound twice, ACKs flow again once the store is back,
and clients ACKed before the kill get the same address from the new store.

The store is killed about three seconds into a ten-second storm and started
again at once; the storm's ACKs after the restart are reported, not asserted
(how soon they resume depends on the machine). Once the storm is over and the
backlog worked through, a calm perfdhcp pass brings the first clients back.

perfdhcp acts as the relay (198.18.0.2, 198.18.0.0/16); a sniffer beside it
(dhcp_sniffer.py, an AF_PACKET socket reading copies of frames) records every
reply on the wire, so "seen ACKed" is every ACK that reached perfdhcp's
address, a superset of what perfdhcp counted. dhcpd keeps running through the
crash and finds the new store on its own.

The store runs outside the lab's namespaces, beside its database: PostgreSQL
listens on the host's 127.0.0.1, which a namespace cannot reach, and the bus
is an ipc socket (a file) that dhcpd reaches from inside its namespace.
"""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from astralboot.common.config import load
from astralboot.common.health import check
from astralboot.common.cli.demo.netns import Host, Lab
from support.stack import Stack
from astralboot.services.store.models import leases

from dhcp_lab import DhcpLab, write_lab_config
from test_dhcp_perfdhcp import exchange

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "store"))
from store_lab import database_for  # noqa: E402

pytestmark = pytest.mark.netns

SNIFFER = str(Path(__file__).with_name("dhcp_sniffer.py"))
SUBNET = {"network": "198.18.0.0/16", "range": "198.18.1.0-198.18.250.255"}
RELAY = "198.18.0.2"
RATE = 2000  # DORA exchanges a second
PERIOD = 10  # seconds perfdhcp sends
# perfdhcp takes its MACs in turn: each client does DORA twice, 5 s apart, so
# those ACKed before the kill come back after the restart, to a store that
# must give them the same address again.
CLIENTS = RATE * PERIOD // 2
SECOND_PASS = 2000  # the first clients once more, after the storm
KILL_AFTER = 3.0  # seconds into the run, once ACKs are flowing
FLOWING = 50  # ACKs in the last second that count as "flowing" (a loaded machine is slow)


@dataclass(frozen=True, slots=True)
class Reply:
    """One DHCP reply seen on the wire by the sniffer."""

    time: float  # kernel receive time, epoch seconds
    kind: str  # ACK, OFFER, NAK
    mac: str
    ip: str
    xid: str


class Sniffer:
    """dhcp_sniffer.py running in ``host``'s namespace; its replies, as they come."""

    def __init__(self, host: Host, out: Path) -> None:
        self.out = out
        self.proc = host.ns.popen([sys.executable, SNIFFER, "--iface", host.ifname,
                                   "--port", "67", "--out", str(out)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.replies: list[Reply] = []
        self.summary: dict[str, int] = {}
        self._offset = 0

    def wait_ready(self, timeout: float = 15) -> None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"the sniffer did not start ({line!r}):\n{err}")

    def poll(self) -> list[Reply]:
        """Every reply recorded so far (complete lines only)."""
        with self.out.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.decode("ascii").splitlines():
            stamp, kind, mac, ip, xid = line.split()
            self.replies.append(Reply(float(stamp), kind, mac, ip, xid))
        return self.replies

    def stop(self) -> None:
        """Stop it, read what it recorded last, and keep its summary."""
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        lines = out.splitlines()
        assert self.proc.returncode == 0 and lines, f"the sniffer failed:\n{out}\n{err}"
        self.summary = json.loads(lines[-1])
        self.poll()


@contextmanager
def serving_beside(lab: Lab, folder: Path, database: str) -> Iterator[tuple[Stack, DhcpLab]]:
    """The store on the host (next to its database), dhcpd in the lab's server namespace."""
    path = write_lab_config(folder, {"log_level": "info", "store.database": database},
                            subnets=[SUBNET])
    with Stack(path, services=("store",)) as store, \
            Stack(path, services=("dhcpd",), netns=lab.server) as front:
        dl = DhcpLab(lab, front, load(path))
        try:
            yield store, dl
        finally:
            dl.close()


@contextmanager
def sniffing(host: Host, out: Path) -> Iterator[Sniffer]:
    """A sniffer on ``host`` for the block; the block calls ``stop()`` when done."""
    sniffer = Sniffer(host, out)
    try:
        sniffer.wait_ready()
        yield sniffer
    finally:
        if sniffer.proc.poll() is None:  # the block failed before stop()
            sniffer.proc.kill()
            sniffer.proc.communicate()


def acks(replies: list[Reply]) -> list[Reply]:
    return [r for r in replies if r.kind == "ACK" and r.ip != "0.0.0.0"]


def wait_for_acks(store: Stack, dl: DhcpLab, sniffer: Sniffer, started: float) -> None:
    """Until KILL_AFTER seconds have passed and ACKs are arriving right now."""
    end = time.monotonic() + PERIOD - 2  # leave perfdhcp time to see the restart
    while True:
        now = time.time()
        recent = sum(1 for r in acks(sniffer.poll()) if r.time > now - 1)
        if now - started >= KILL_AFTER and recent >= FLOWING:
            return
        if time.monotonic() > end:
            raise AssertionError(f"ACKs never flowed ({recent} in the last second); dhcpd: "
                                 f"{dl.stats()}\n{dl.stack.log_tail('dhcpd')}\n"
                                 f"{store.log_tail('store')}")
        time.sleep(0.1)


def lease_rows(url: str) -> dict[str, tuple[str, str]]:
    """address -> (mac, state), read straight from the database."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(leases.c.address, leases.c.mac, leases.c.state))
            out: dict[str, tuple[str, str]] = {}
            for address, mac, state in rows:
                assert address not in out, f"two rows for {address}"
                out[address] = (mac, state)
            return out
    finally:
        engine.dispose()


def longest_silence(times: list[float], start: float, end: float) -> float:
    """The longest wait for an ACK between ``start`` and ``end``."""
    inside = sorted(t for t in times if start <= t < end)
    marks = [start, *inside, end]
    return max(b - a for a, b in zip(marks, marks[1:]))


def two_of(pairs: set[tuple[str, str]]) -> dict[str, set[str]]:
    """Keys paired with more than one value."""
    seen: dict[str, set[str]] = defaultdict(set)
    for key, value in pairs:
        seen[key].add(value)
    return {k: v for k, v in seen.items() if len(v) > 1}


def perfdhcp(relay: Host, *args: str) -> list[str]:
    """perfdhcp as the relay. -d 2 only keeps its bookkeeping short: what
    counts here is what reached the wire, late or not."""
    return relay.ns.argv(["perfdhcp", "-4", "-l", RELAY, "-R", str(CLIENTS), "-d", "2",
                          "-W", "2000000", *args, "198.18.0.1"])


def received_acks(output: str, returncode: int) -> int:
    assert returncode in (0, 3), output  # 3: some exchanges were dropped
    return exchange(output, "REQUEST-ACK")["received packets"]


@dataclass
class CrashRun:
    """What one run saw: when things happened, the wire, the counters, the rows."""

    started: float
    killed: float
    restarted: float
    storm_over: float  # when perfdhcp's storm ended
    second_pass: float  # when the calm second pass began, the backlog worked through
    perfdhcp_acks: int
    replies: list[Reply]
    sniffer: dict[str, int]
    dhcpd: dict[str, Any]
    rows: dict[str, tuple[str, str]]
    store_exit: int | None  # the restarted store's exit status at the end (None: running)
    logs: str


def crash_under_perfdhcp(backend: str, lab: Lab, folder: Path) -> CrashRun:
    """PERIOD seconds of perfdhcp with a kill -9 of the store once ACKs flow and
    a restart right after; then, the storm over, a calm pass of the first
    SECOND_PASS clients again."""
    with database_for(backend, folder) as url:
        with serving_beside(lab, folder, url) as (store, dl):
            lab.add_address("198.18.0.1/16")
            relay = lab.add_host("perf", address=f"{RELAY}/16")

            def settled() -> bool:  # every reply owed is on the wire, no backlog left
                if dl.stats()["in_flight"]:
                    return False
                health = check(dl.config, "store", timeout=1)
                return health.up and health.details.get("commit.pending") == 0

            with sniffing(relay, folder / "replies.txt") as sniffer:
                storm = subprocess.Popen(perfdhcp(relay, "-r", str(RATE), "-p", str(PERIOD)),
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True)
                try:
                    started = time.time()
                    wait_for_acks(store, dl, sniffer, started)
                    killed = time.time()
                    store.kill("store")  # SIGKILL to the store's process group
                    store.start("store")  # returns once it answers health
                    restarted = time.time()
                    out, _ = storm.communicate(timeout=PERIOD + 60)
                finally:
                    if storm.poll() is None:
                        storm.kill()
                        storm.communicate()
                counted = received_acks(out, storm.returncode)
                storm_over = time.time()
                dl.wait_for("dhcpd and the store to catch up", settled, timeout=90)
                second_pass = time.time()
                calm = subprocess.run(perfdhcp(relay, "-r", str(RATE // 2),
                                               "-n", str(SECOND_PASS)),
                                      capture_output=True, text=True, timeout=120)
                counted += received_acks(calm.stdout + calm.stderr, calm.returncode)
                dl.wait_for("dhcpd and the store to catch up", settled)
                sniffer.stop()
            dhcpd = dl.stats()
            store_exit = store.procs["store"].poll()
            logs = f"{store.log_tail('store', 60)}\n{dl.stack.log_tail('dhcpd', 60)}"
        rows = lease_rows(url)
    return CrashRun(started, killed, restarted, storm_over, second_pass, counted, sniffer.replies,
                    sniffer.summary, dhcpd, rows, store_exit, logs)


BACKENDS = [pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_9_of_the_store_under_perfdhcp_loses_no_ack(backend: str, lab: Lab,
                                                          short_tmp: Path) -> None:
    run = crash_under_perfdhcp(backend, lab, short_tmp)
    wire = acks(run.replies)
    acked = {(r.mac, r.ip) for r in wire}
    before = [r for r in wire if r.time < run.killed]
    after = [r for r in wire if run.restarted <= r.time < run.second_pass]
    calm = [r for r in wire if r.time >= run.second_pass]
    early = {r.mac for r in before}
    returned_in_storm = early & {r.mac for r in after}
    returned = early & {r.mac for r in calm}
    naks = [r for r in run.replies if r.kind == "NAK"]
    bound = {(mac, address) for address, (mac, state) in run.rows.items() if state == "bound"}
    missing = [(mac, ip, run.rows.get(ip)) for mac, ip in sorted(acked)
               if run.rows.get(ip) != (mac, "bound")]
    silence = longest_silence([r.time for r in wire], run.killed, run.storm_over)
    resumed = min((r.time for r in after if r.time < run.storm_over), default=None)
    recovery = ("NO ACK after the restart while perfdhcp was sending" if resumed is None
                else f"first ACK {resumed - run.restarted:.2f} s after the restart")
    counters = {k: v for k, v in run.dhcpd.items() if not k.startswith("bus.")}
    print(f"\n[{backend}] ACKs on the wire {len(wire)} ({len(acked)} client/address pairs, "
          f"{len({r.mac for r in wire})} clients); perfdhcp counted {run.perfdhcp_acks}, dhcpd "
          f"sent {run.dhcpd.get('acks')}; NAKs {len(naks)}\n"
          f"[{backend}] storm: kill at +{run.killed - run.started:.2f} s, {len(before)} ACKs "
          f"before it; store answering again {run.restarted - run.killed:.2f} s after it; "
          f"{len(after)} ACKs after the restart ({len(returned_in_storm)} to clients back "
          f"from before the kill); {recovery}; longest wait for an ACK {silence:.2f} s; "
          f"backlog worked through {run.second_pass - run.storm_over:.2f} s after the storm\n"
          f"[{backend}] calm pass: {len(calm)} ACKs, {len(returned)} to clients ACKed before "
          f"the kill\n"
          f"[{backend}] rows checked {len(acked)}; rows in the table {len(run.rows)}, "
          f"{len(bound)} bound\n[{backend}] sniffer {run.sniffer}\n[{backend}] dhcpd {counters}")

    # The sniffer saw at least what perfdhcp saw: "seen ACKed" is complete.
    assert len(wire) >= run.perfdhcp_acks, run.sniffer
    # The kill landed mid-stream; the service came back, and clients ACKed
    # before the kill were served again by a store that had to remember them.
    assert before, "no ACK before the kill"
    assert run.store_exit is None, f"the restarted store exited ({run.store_exit}):\n{run.logs}"
    assert returned, ("no client ACKed before the kill was ACKed again after the restart\n"
                      f"{run.logs}")
    # Every ACKed client is bound in the database on the address it was given.
    assert not missing, (f"{len(missing)} of {len(acked)} ACKed leases are not bound to their "
                         f"client in the database (mac, ip, row): {missing[:5]}\n{run.logs}")
    # No address went to two clients, nor a client to two addresses.
    for what, pairs in (("address ACKed to two clients", {(ip, mac) for mac, ip in acked}),
                        ("client ACKed two addresses", acked),
                        ("client bound on two addresses in the database", bound)):
        doubles = two_of(pairs)
        assert not doubles, f"{len(doubles)} {what}, e.g. {sorted(doubles.items())[:5]}"
