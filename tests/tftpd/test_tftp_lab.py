"""tftpd as deployed: the real store, real clients, in network namespaces.

The server namespace runs ``astralboot store`` and ``astralboot tftpd`` on
br0 (192.0.2.1); clients run in their own namespace on the bridge.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from astralboot.common.bus.client import SyncBusClient
from astralboot.common.config import load
from astralboot.common.cli.demo.netns import Host, Lab
from support.stack import Stack, astralboot_argv, write_config
from astralboot.common.messages import LeaseCommit, LeaseGrant, LeaseOffer
from astralboot.services.tftpd.packets import to_netascii

pytestmark = pytest.mark.netns

SERVER = "192.0.2.1"
CLIENT = "192.0.2.150"
CLIENT_SCRIPT = str(Path(__file__).with_name("tftp_client.py"))
IPXE = Path("/usr/lib/ipxe/ipxe.efi").read_bytes()
UNDI = Path("/usr/lib/ipxe/undionly.kpxe").read_bytes()
MENU = b"#!ipxe\n# menu\r\nchain http://192.0.2.1/boot.ipxe\n"
SECRET = b"outside the served root\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class TftpLab:
    lab: Lab
    stack: Stack
    client: Host
    folder: Path

    def run(self, cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.client.ns.run(cmd, check=False, timeout=timeout, cwd=self.folder)

    def script(self, *args: str, timeout: float = 120) -> dict[str, Any]:
        """tftp_client.py in the client namespace; its JSON answer."""
        proc = self.run([sys.executable, CLIENT_SCRIPT, SERVER, *args], timeout=timeout)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)  # type: ignore[no-any-return]

    def status(self) -> dict[str, Any]:
        """tftpd's counters, once its last sessions have ended.

        A client exits as soon as it has sent its last ACK; tftpd counts the
        transfer when that ACK arrives, a moment later.
        """
        for _ in range(100):
            out = self.stack.cli("status", "--service", "tftpd", "--json").stdout
            details: dict[str, Any] = json.loads(out)[0]["details"]
            if details.get("sessions") == 0:
                break
            time.sleep(0.1)
        return details


def make_data(folder: Path) -> Path:
    data = folder / "data"
    tftp = data / "tftp"
    (tftp / "boot").mkdir(parents=True)
    (tftp / "ipxe.efi").write_bytes(IPXE)
    (tftp / "undionly.kpxe").write_bytes(UNDI)
    (tftp / "boot" / "menu.ipxe").write_bytes(MENU)
    (folder / "secret.txt").write_bytes(SECRET)
    os.symlink(folder / "secret.txt", tftp / "secret")  # absolute, out of the root
    os.symlink("../../secret.txt", tftp / "relative-secret")  # relative, out of the root
    os.symlink("/etc/passwd", tftp / "passwd")
    return data


@pytest.fixture
def tftp_lab(lab: Lab, short_tmp: Path) -> Iterator[Callable[..., TftpLab]]:
    """Start store + tftpd with the given [tftp] settings: ``tftp_lab(per_client=1)``."""
    stacks: list[Stack] = []

    def start(**tftp: Any) -> TftpLab:
        extra = {"tftp.per_client": 128, "bus.deadline": 1.0}
        extra.update({f"tftp.{k}": v for k, v in tftp.items()})
        config = write_config(short_tmp, data=make_data(short_tmp), extra=extra)
        stack = Stack(config, services=("store", "tftpd"), netns=lab.server)
        stack.__enter__()
        stacks.append(stack)
        client = lab.add_host("c1", f"{CLIENT}/24")
        (short_tmp / "out").mkdir()
        return TftpLab(lab=lab, stack=stack, client=client, folder=short_tmp / "out")

    yield start
    for stack in stacks:
        stack.stop()


# --- real clients ------------------------------------------------------------------


@pytest.mark.parametrize("single_port", [False, True])
def test_real_clients(tftp_lab: Callable[..., TftpLab], single_port: bool) -> None:
    t = tftp_lab(single_port=single_port)
    out = t.folder
    hpa = t.run(["tftp", SERVER, "-m", "binary", "-c", "get", "ipxe.efi", "hpa.efi"])
    assert hpa.returncode == 0 and (out / "hpa.efi").read_bytes() == IPXE, hpa.stdout
    ascii_ = t.run(["tftp", SERVER, "-m", "ascii", "-c", "get", "boot/menu.ipxe", "menu"])
    assert ascii_.returncode == 0 and (out / "menu").read_bytes() == MENU, ascii_.stdout
    curl = t.run(["curl", "-sS", "--tftp-blksize", "1468", "-o", "curl.efi",
                  f"tftp://{SERVER}/ipxe.efi"])
    assert curl.returncode == 0 and (out / "curl.efi").read_bytes() == IPXE, curl.stderr
    atftp = t.run(["atftp", "--trace", "--option", "windowsize 16", "-g", "-r", "undionly.kpxe",
                   "-l", "atftp.kpxe", SERVER])
    assert atftp.returncode == 0 and (out / "atftp.kpxe").read_bytes() == UNDI, atftp.stderr
    trace = atftp.stdout + atftp.stderr
    assert "received OACK <windowsize: 16" in trace
    assert trace.count("sent ACK") <= len(UNDI) // 512 // 16 + 3  # one ACK per window
    assert t.status()["transfers"] == 4


def test_blksize_is_clamped_to_the_interface_mtu(tftp_lab: Callable[..., TftpLab]) -> None:
    t = tftp_lab()
    result = t.script("get", "ipxe.efi", "blksize=65464", "tsize=0")
    assert result["oack"] == {"blksize": "1468", "tsize": str(len(IPXE))}  # br0: MTU 1500
    assert result["sha256"] == sha(IPXE)


def test_uefi_probe_sequence(tftp_lab: Callable[..., TftpLab]) -> None:
    # One session per client address: the real request is served at its
    # first asking only if the probe's session was freed by its ERROR 8.
    t = tftp_lab(per_client=1)
    for same_port in (False, True):
        result = t.script("uefi", "ipxe.efi", *(["--same-port"] if same_port else []))
        assert result["tsize"] == len(IPXE)
        assert result["sha256"] == sha(IPXE)
        assert result["requests"] == 1
        assert result["late"] == []
    status = t.status()
    assert status["sessions"] == 0
    assert status["transfers.probes"] == 2 and status["transfers"] == 2


def test_stranger_gets_error_5_and_the_transfer_goes_on(
        tftp_lab: Callable[..., TftpLab]) -> None:
    t = tftp_lab()
    assert t.script("stranger", "ipxe.efi")["sha256"] == sha(IPXE)
    assert t.status()["unknown_tid"] == 1


@pytest.mark.parametrize("single_port", [False, True])
def test_100_concurrent_transfers_are_byte_identical(tftp_lab: Callable[..., TftpLab],
                                                     single_port: bool) -> None:
    t = tftp_lab(single_port=single_port)
    script = ('for i in $(seq 100); do tftp 192.0.2.1 -m binary -c get ipxe.efi out.$i & done; '
              'wait')
    proc = t.run(["sh", "-c", script], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = sorted(t.folder.glob("out.*"))
    assert len(files) == 100
    assert {sha(f.read_bytes()) for f in files} == {sha(IPXE)}
    status = t.status()
    assert status["transfers"] == 100 and status["sessions"] == 0


# --- paths ---------------------------------------------------------------------------

TRAVERSALS = [
    "../secret.txt",
    "../../secret.txt",
    "/../../etc/passwd",
    "..\\..\\etc\\passwd",
    "boot/../../secret.txt",
    "/etc/passwd",  # a leading slash is ignored: tftp/etc/passwd does not exist
    "C:\\Windows\\win.ini",
    "a" * 300,
]
SYMLINKS = ["secret", "relative-secret", "passwd"]  # all leave the root


def assert_refused(t: TftpLab, names: list[str]) -> None:
    for name in names:
        result = t.script("get", name)
        assert "sha256" not in result, f"{name!r} was served"
        assert result["error"].startswith(("ERROR 1:", "ERROR 2:")), (name, result)


def test_traversal_battery_gets_errors_and_no_bytes(tftp_lab: Callable[..., TftpLab]) -> None:
    t = tftp_lab()
    assert_refused(t, TRAVERSALS)
    # A NUL inside the name: the rest of it reads as the mode.
    nul = b"ipxe.efi\0../../secret.txt".hex()
    answers = t.script("raw", "0001" + nul + "00" + b"octet".hex() + "00")["answers"]
    assert [a["op"] for a in answers] == ["ERROR"] and answers[0]["code"] == 2
    # Backslashes and a leading slash still find a file inside the root.
    assert t.script("get", "\\boot\\menu.ipxe")["sha256"] == sha(MENU)
    assert t.script("get", "/ipxe.efi")["sha256"] == sha(IPXE)


def test_symlinks_leaving_the_root_get_no_bytes(tftp_lab: Callable[..., TftpLab]) -> None:
    # tftpd cannot see links (the store hides where bytes come from); the
    # store must refuse them for a local folder.
    t = tftp_lab()
    assert_refused(t, SYMLINKS)


def test_write_request_is_refused(tftp_lab: Callable[..., TftpLab]) -> None:
    t = tftp_lab()
    (t.folder / "up").write_bytes(b"overwrite")
    put = t.run(["tftp", SERVER, "-m", "binary", "-c", "put", "up", "ipxe.efi"])
    assert "read-only" in put.stdout + put.stderr
    data = t.script("get", "ipxe.efi")
    assert data["sha256"] == sha(IPXE)


# --- the store ---------------------------------------------------------------------


def test_store_down_gives_error_0_within_the_deadline(tftp_lab: Callable[..., TftpLab]) -> None:
    t = tftp_lab()
    t.stack.stop_one("store")
    # The client collects answers for 5x the bus deadline (1 s here).
    answers = t.script("raw", "0001" + b"ipxe.efi".hex() + "00" + b"octet".hex() + "00",
                       "--wait", "5")["answers"]
    assert answers and answers[0]["op"] == "ERROR", answers
    assert answers[0]["code"] == 0
    assert "unavailable" in answers[0]["message"]


def test_tftp_sent_event_names_the_machine_by_its_lease(
        tftp_lab: Callable[..., TftpLab]) -> None:
    t = tftp_lab()
    config = load(t.stack.config)
    with SyncBusClient(config.bus.endpoint) as bus:
        offer = bus.call(LeaseOffer(mac=t.client.mac, subnet="192.0.2.0/24",
                                    requested_ip=CLIENT))
        assert isinstance(offer, LeaseGrant) and offer.ip == CLIENT
        bus.call(LeaseCommit(mac=t.client.mac, subnet="192.0.2.0/24", ip=CLIENT,
                             mode="select"))
    assert t.script("get", "undionly.kpxe")["sha256"] == sha(UNDI)
    events: list[dict[str, Any]] = []
    for _ in range(50):  # the event travels tftpd → store asynchronously
        proc = t.stack.cli("events", "--json", "--mac", t.client.mac)
        events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        if any(e["stage"] == "tftp.sent" for e in events):
            break
        time.sleep(0.2)
    sent = [e for e in events if e["stage"] == "tftp.sent"]
    assert len(sent) == 1, events
    assert sent[0]["ip"] == CLIENT and sent[0]["service"] == "tftpd"
    assert sent[0]["detail"] == f"undionly.kpxe {len(UNDI)} bytes"


def test_port_in_use_stops_tftpd_with_a_clear_reason(lab: Lab, short_tmp: Path) -> None:
    config = write_config(short_tmp, data=make_data(short_tmp))
    holder = lab.server.popen([sys.executable, "-c",
                               "import socket,time; s=socket.socket(socket.AF_INET,"
                               "socket.SOCK_DGRAM); s.bind(('192.0.2.1',69)); print('ok',"
                               "flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        proc = lab.server.run(astralboot_argv("tftpd", "-c", str(config)), check=False,
                              timeout=60)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2
    assert "tftpd: cannot start: UDP port 69 on 192.0.2.1 is in use" in proc.stderr


# --- netascii and memory -------------------------------------------------------------

# 4 MiB of text: LF line ends, every 50th line a CR LF and a bare CR (each of
# them changes under netascii), so the copy is larger than the file.
BIG_TEXT = b"".join(
    b"line %06d of a menu that an old switch reads in ascii mode%s" %
    (i, b"\r\n\r" if i % 50 == 0 else b"\n") for i in range(70_000))[:4 << 20]


def memory_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def test_144_netascii_clients_share_one_copy(tftp_lab: Callable[..., TftpLab]) -> None:
    # Every client comes from one address: let them all in at once.
    t = tftp_lab(per_client=200)
    (t.folder.parent / "data" / "tftp" / "big.txt").write_bytes(BIG_TEXT)
    expected = to_netascii(BIG_TEXT)
    pid = t.stack.procs["tftpd"].pid  # `ip netns exec` execs tftpd in place
    assert b"tftpd" in Path(f"/proc/{pid}/cmdline").read_bytes()
    warm = t.script("get", "big.txt", "tsize=0", "--mode", "netascii")
    assert warm["sha256"] == sha(expected) and warm["oack"] == {"tsize": str(len(expected))}
    baseline = memory_kib(pid)
    try:  # the peak (VmHWM) from here on, not since start-up
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        hwm_reset = True
    except OSError:
        hwm_reset = False
    clients = t.client.ns.popen(
        [sys.executable, CLIENT_SCRIPT, SERVER, "many", "big.txt", "tsize=0", "blksize=1468",
         "windowsize=16", "--mode", "netascii", "--count", "144"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=t.folder)
    peak = baseline
    while clients.poll() is None:
        peak = max(peak, memory_kib(pid))
        time.sleep(0.02)
    out, err = clients.communicate()
    if hwm_reset:
        peak = max(peak, memory_kib(pid, "VmHWM"))
    assert clients.returncode == 0, err
    result = json.loads(out)
    assert result["finished"] == 144, result["errors"]
    assert result["sha256"] == {sha(expected): 144}  # exactly to_netascii(file), each
    assert result["tsizes"] == [len(expected)]
    rise_mib = (peak - baseline) / 1024
    print(f"\ntftpd RSS: {baseline / 1024:.1f} MiB after one warm-up transfer, "
          f"peak {peak / 1024:.1f} MiB with 144 netascii clients of a "
          f"{len(BIG_TEXT) >> 20} MiB file: +{rise_mib:.1f} MiB "
          f"(peak {'from VmHWM' if hwm_reset else 'sampled'})")
    assert rise_mib < 64, f"tftpd grew by {rise_mib:.1f} MiB"
    status = t.status()
    assert status["transfers"] == 145 and status["sessions"] == 0
    assert status["netascii.conversions"] == 1  # converted once, for the warm-up
    assert status["memory_used"] <= status["memory_max"]


def test_netascii_larger_than_memory_max_is_refused_with_a_reason(
        tftp_lab: Callable[..., TftpLab]) -> None:
    t = tftp_lab(memory_max="1M")
    (t.folder.parent / "data" / "tftp" / "big.txt").write_bytes(BIG_TEXT)
    refused = t.script("get", "big.txt", "--mode", "netascii")
    assert refused["error"].startswith("ERROR 0: file too large for netascii"), refused
    assert "use octet" in refused["error"]
    assert t.script("get", "big.txt")["sha256"] == sha(BIG_TEXT)  # octet needs no copy
    assert t.script("get", "boot/menu.ipxe", "--mode", "netascii")["sha256"] == sha(
        to_netascii(MENU))  # a small text still fits
    status = t.status()
    assert status["refused.not_defined"] == 1 and status["memory_max"] == 1 << 20
