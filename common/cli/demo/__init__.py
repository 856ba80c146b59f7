"""``astralboot demo``: one machine, power-on to unattended install, watched live.

Builds an isolated namespace network, starts every service on it with
the embedded defaults (SQLite, the bundled data folder filled from Debian's
netboot installer and iPXE packages), powers on a diskless QEMU guest and
prints each boot stage as the services report it, until the Debian
installer fetches the preseed rendered for that machine. Then it reports
the time per stage and removes everything, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from astralboot.common.config import load
from astralboot.common.cli.datafolder import create as create_data_folder
from astralboot.common.errors import AstralBootError
from astralboot.common.cli.demo.boot import BootFailed, ServeProcess, Timeline, WatchedBoot
from astralboot.common.cli.demo.guest import Guest
from astralboot.common.cli.demo.netns import Lab, LabError, require_root
from astralboot.common.cli.demo.site import write_config
from astralboot.common.messages import BootEvent

NEEDED = {
    "boot/debian/images/linux": "debian-installer-12-netboot-amd64",
    "boot/debian/images/initrd.gz": "debian-installer-12-netboot-amd64",
    "tftp/undionly.kpxe": "ipxe",
    "tftp/snponly.efi": "ipxe",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--uefi", action="store_true",
                   help="boot through OVMF and EDK2's own PXE client (default: BIOS)")
    p.add_argument("--assign", metavar="OS",
                   help="assign the machine an OS first, so it skips the menu")
    p.add_argument("--timeout", type=float, default=600,
                   help="seconds to wait for the installer (default 600)")
    p.add_argument("--keep", action="store_true", help="keep the work folder for inspection")


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _say(text: str) -> None:
    print(text, flush=True)


def _describe(event: BootEvent) -> str:
    where = f"{event.ip}  " if event.ip else ""
    return f"{event.stage:14} {where}{event.detail}"


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        require_root("astralboot demo")
    except LabError as exc:
        print(f"astralboot demo: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_term)
    # Ctrl-C must clean up even when whoever started us passed SIGINT on as
    # ignored (a job started in the background does), which Python keeps.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    firmware = "uefi" if args.uefi else "bios"
    mac = f"52:54:00:{secrets.token_hex(1)}:{secrets.token_hex(1)}:{secrets.token_hex(1)}"
    work = Path(tempfile.mkdtemp(prefix="ab-demo-"))
    try:
        return _run(args, firmware, mac, work)
    except KeyboardInterrupt:
        _say("\ninterrupted; cleaning up")
        return 130
    except (BootFailed, AstralBootError) as exc:
        print(f"astralboot demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            _say(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, firmware: str, mac: str, work: Path) -> int:
    data = work / "data"
    _say(f"AstralBoot demo: a diskless {firmware.upper()} guest ({mac}) on an isolated "
         "network, 192.0.2.0/24 in a namespace")
    for line in create_data_folder(data):
        if "image" in line or "ipxe" in line.lower():
            _say(f"  {line}")
    missing = [(p, pkg) for p, pkg in NEEDED.items() if not (data / p).exists()]
    if missing:
        for path, pkg in missing:
            print(f"astralboot demo: {path} missing: install the Debian package {pkg}",
                  file=sys.stderr)
        return 2

    with Lab() as lab:
        tap = lab.add_tap()
        _say(f"  network: namespace {lab.server.name}, bridge {lab.bridge} at "
             f"{lab.server_address}/{lab.prefix}, guest on {tap}")
        config_path = write_config(work, interface=lab.bridge, address=lab.server_address,
                                   data=data, extra={"menu.timeout": 3, "menu.default": "debian",
                                                     "log_level": "info"})
        config = load(config_path)
        started = time.monotonic()
        with ServeProcess(config, lab.server, work / "serve.log") as serve:
            _say(f"  services up in {time.monotonic() - started:.1f}s: store, dhcpd, tftpd, "
                 f"httpd (logs: {serve.log})")
            if args.assign:
                from astralboot.common.bus.client import SyncBusClient
                from astralboot.common.messages import MachineSet
                with SyncBusClient(config.bus.endpoint) as bus:
                    bus.call(MachineSet(mac=mac, os=args.assign))
                _say(f"  {mac} assigned {args.assign}: it boots straight into it")
            else:
                _say(f"  {mac} is new: it goes through the menu, whose default "
                     f"({config.menu.default}) is taken after {config.menu.timeout}s")
            guest = Guest(firmware=firmware, mac=mac, tap=tap, workdir=work)  # type: ignore[arg-type]

            def show(tl: Timeline, event: BootEvent) -> None:
                _say(f"  [{tl.at(event):5.1f}s] {_describe(event)}")

            with WatchedBoot(guest, lab.server, config.bus.events) as boot:
                _say(f"\n  [  0.0s] power on ({firmware})")
                boot.wait_for("http.template", args.timeout, on_event=show)
            timeline = boot.timeline
        _report(timeline)
    return 0


def _report(timeline: Timeline) -> None:
    _say(f"\nThe installer fetched its preseed {timeline.total():.1f}s after power-on.\n")
    _say(f"  {'stage':14} {'at':>8} {'took':>8}")
    previous = 0.0
    for event in timeline.events:
        at = timeline.at(event)
        _say(f"  {event.stage:14} {at:7.1f}s {at - previous:7.1f}s")
        previous = at
