"""Real firmware against proxyDHCP: an OVMF (EDK2) guest in QEMU gets its address
from dnsmasq and its boot file from dhcpd, then asks dhcpd's host for it over
TFTP. (Authoritative mode with real firmware: tests/e2e/test_boot_chain.py.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from astralboot.common.cli.demo.netns import Lab
from dhcp_lab import PROBE, serving

pytestmark = [pytest.mark.netns, pytest.mark.qemu]

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
TIMEOUT = 600  # TCG on a busy 2-core machine


def test_uefi_firmware_takes_the_boot_file_from_the_proxy(lab: Lab, short_tmp: Path) -> None:
    other = lab.add_host("other", address="192.0.2.5/24")
    dnsmasq = other.ns.popen(
        ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
         f"--pid-file={short_tmp}/dnsmasq.pid", f"--dhcp-leasefile={short_tmp}/dnsmasq.leases",
         f"--interface={other.ifname}", "--bind-interfaces",
         "--dhcp-range=192.0.2.50,192.0.2.60,1h"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with serving(lab, short_tmp, {"dhcp.proxy": True}) as dl:
            # Stand in for tftpd: the first TFTP request that reaches 192.0.2.1.
            tftp = lab.server.popen([sys.executable, PROBE, "--iface", lab.bridge, "--port", "69",
                                     "--count", "1", "--wait", str(TIMEOUT)],
                                    stdout=subprocess.PIPE, text=True)
            tap = lab.add_tap()
            shutil.copy(OVMF_VARS, short_tmp / "vars.fd")
            guest = lab.server.popen(
                ["qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nographic",
                 "-no-reboot", "-boot", "n",
                 "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,file={short_tmp}/vars.fd",
                 "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
                 "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:57,romfile="],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                out, _ = tftp.communicate(timeout=TIMEOUT + 30)
            finally:
                guest.kill()
                guest.wait(timeout=30)
            stats = dl.stats()
            leases = dl.leases()
    finally:
        dnsmasq.terminate()
        dnsmasq.wait(timeout=10)
    assert out.strip(), f"the guest never asked for its boot file; dhcpd counters: {stats}"
    request = bytes.fromhex(json.loads(out.splitlines()[0])["data"])
    assert request[:2] == b"\x00\x01"  # a TFTP read request...
    assert request[2:].split(b"\0")[0] == b"snponly.efi"  # ...for the file the proxy named
    assert stats["proxy_offers"] >= 1
    assert leases == []  # the address came from dnsmasq
