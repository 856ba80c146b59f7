"""Whole chain: power-on to the Debian installer fetching its preseed.

AstralBoot (``astralboot serve``) against the peer pair people use today,
dnsmasq (DHCP + TFTP) + nginx (HTTP), serving the same kernel, initrd and
iPXE binaries, in the same run, for a BIOS and a UEFI guest under QEMU/TCG.
Both serve the machine a direct boot script (AstralBoot: the OS is assigned
beforehand), so neither waits on a menu.

    sudo ./run.sh bench chain        (or: python -m bench chain [--firmware bios])
"""

from __future__ import annotations

import sys

import argparse
import json
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from astralboot.common.bus.client import SyncBusClient
from astralboot.common.config import load
from astralboot.common.cli.datafolder import create as create_data_folder
from astralboot.common.cli.demo.boot import ServeProcess, Timeline, boot_until
from astralboot.common.cli.demo.guest import Guest, stop
from astralboot.common.cli.demo.netns import Lab
from astralboot.common.cli.demo.site import write_config
from astralboot.common.messages import MachineSet

TIMEOUT = 900
RESULTS = Path(__file__).parent / "results"

PEER_SCRIPT = """#!ipxe
kernel http://192.0.2.1/linux initrd=initrd.gz auto=true priority=critical preseed/url=http://192.0.2.1/preseed.cfg
initrd http://192.0.2.1/initrd.gz
boot
"""

DNSMASQ = """port=0
user=root
log-facility=-
interface=br0
bind-interfaces
dhcp-range=192.0.2.100,192.0.2.199,12h
dhcp-option=option:dns-server,192.0.2.1
dhcp-option=option:router,192.0.2.1
enable-tftp
tftp-root={root}/tftp
dhcp-match=set:ipxe,175
dhcp-userclass=set:ipxe,iPXE
dhcp-match=set:efi64,option:client-arch,7
dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe
dhcp-boot=tag:!ipxe,tag:efi64,snponly.efi
dhcp-boot=tag:ipxe,http://192.0.2.1/boot.ipxe
dhcp-leasefile={root}/leases
"""

NGINX = """daemon off;
worker_processes 2;
error_log {root}/nginx-error.log;
pid {root}/nginx.pid;
events {{}}
http {{
  access_log {root}/access.log;
  sendfile on;
  server {{ listen 192.0.2.1:80; root {root}/www; }}
}}
"""


def _mac() -> str:
    return "52:54:00:" + ":".join(secrets.token_hex(1) for _ in range(3))


def peer(firmware: str, data: Path, work: Path) -> float:
    root = work / "peer"
    (root / "www").mkdir(parents=True)
    (root / "tftp").mkdir()
    for name in ("undionly.kpxe", "snponly.efi"):
        shutil.copy(data / "tftp" / name, root / "tftp" / name)
    for name in ("linux", "initrd.gz"):
        shutil.copy(data / "boot/debian/images" / name, root / "www" / name)
    (root / "www/boot.ipxe").write_text(PEER_SCRIPT)
    (root / "www/preseed.cfg").write_text("d-i debian-installer/locale string en_US\n")
    (root / "dnsmasq.conf").write_text(DNSMASQ.format(root=root))
    (root / "nginx.conf").write_text(NGINX.format(root=root))
    with Lab() as lab:
        tap = lab.add_tap()
        with open(root / "peer.log", "wb") as out:
            dnsmasq = lab.server.popen(["dnsmasq", "-C", str(root / "dnsmasq.conf"), "-k"],
                                       stdout=out, stderr=out)
            nginx = lab.server.popen(["nginx", "-c", str(root / "nginx.conf")],
                                     stdout=out, stderr=out)
        time.sleep(1)
        if dnsmasq.poll() is not None or nginx.poll() is not None:
            for p in (dnsmasq, nginx):
                p.kill()
                p.wait()
            raise RuntimeError(f"peer {firmware}: dnsmasq or nginx did not start:\n"
                               f"{(root / 'peer.log').read_text()}")
        guest = Guest(firmware=firmware, mac=_mac(), tap=tap, workdir=root)  # type: ignore[arg-type]
        started = time.time()
        proc = guest.start(lab.server)
        log = root / "access.log"
        try:
            while time.time() - started < TIMEOUT:
                served = log.read_text() if log.exists() else ""
                if "preseed.cfg" in served:
                    return time.time() - started
                refused = [line for line in served.splitlines() if '" 4' in line or '" 5' in line]
                if refused:
                    raise RuntimeError(f"peer {firmware}: nginx refused {refused[0]}")
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
            raise RuntimeError(f"peer {firmware}: no preseed fetch\n{guest.console_tail()}")
        finally:
            stop(proc)
            for p in (dnsmasq, nginx):
                p.kill()
                p.wait()


def astralboot(firmware: str, data: Path, work: Path) -> Timeline:
    root = work / "astral"
    with Lab() as lab:
        tap = lab.add_tap()
        config = load(write_config(root, interface=lab.bridge, address=lab.server_address,
                                   data=data, extra={"log_level": "warning"}))
        mac = _mac()
        with ServeProcess(config, lab.server, root / "serve.log"):
            with SyncBusClient(config.bus.endpoint) as bus:
                bus.call(MachineSet(mac=mac, os="debian"))
            guest = Guest(firmware=firmware, mac=mac, tap=tap, workdir=root)  # type: ignore[arg-type]
            timeline = boot_until(guest, lab.server, config.bus.events, "http.template", TIMEOUT)
    return timeline


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench chain")
    parser.add_argument("--firmware", choices=["bios", "uefi"], action="append")
    args = parser.parse_args(argv)
    firmwares = args.firmware or ["bios", "uefi"]
    work = Path(tempfile.mkdtemp(prefix="ab-bench-chain-"))
    work.chmod(0o755)  # nginx's workers (nobody) read the peer's files from here
    data = work / "data"
    create_data_folder(data)
    rows = []
    try:
        for fw in firmwares:
            peer_s = peer(fw, data, work / fw)
            timeline = astralboot(fw, data, work / fw)
            ours = timeline.total()
            rows.append({"firmware": fw, "peer_s": round(peer_s, 1), "astralboot_s": round(ours, 1),
                         "ratio": round(ours / peer_s, 2),
                         "stages": [(e.stage, round(timeline.at(e), 1)) for e in timeline.events]})
            print(f"{fw}: dnsmasq+nginx {peer_s:.1f}s, AstralBoot {ours:.1f}s "
                  f"(AstralBoot/peer {ours / peer_s:.2f})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n| firmware | dnsmasq + nginx | AstralBoot | AstralBoot / peer |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['firmware']} | {r['peer_s']} s | {r['astralboot_s']} s | {r['ratio']} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "chain.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
