"""``astralboot demo``: says it needs root, and leaves nothing behind on Ctrl-C.

The full boot it performs is what test_boot_chain.py checks; here the
command itself is exercised up to the guest powering on.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from astralboot.common.cli.demo.netns import leftover_namespaces
from support.stack import astralboot_argv

pytestmark = pytest.mark.netns


def _ignoring_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_demo_needs_root_and_says_so() -> None:
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             *astralboot_argv("demo")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "needs root" in result.stderr


def _qemu_running_for(mac: str) -> bool:
    out = subprocess.run(["pgrep", "-f", f"qemu-system-x86_64.*mac={mac}"],
                         capture_output=True, text=True).stdout
    return bool(out.strip())


def test_ctrl_c_during_the_boot_cleans_everything_up() -> None:
    # Started with SIGINT ignored (as by a suite run in the background): the
    # demo must take Ctrl-C all the same.
    demo = subprocess.Popen(astralboot_argv("demo"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=_ignoring_sigint)
    lines: list[str] = []
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.append(line)
            if "power on" in line:
                break
        assert any("power on" in line for line in lines), "".join(lines)
        time.sleep(3)  # the guest is running and talking DHCP
        ns = re.search(r"namespace (ab\w+)", "".join(lines))
        assert ns is not None and ns.group(1) in leftover_namespaces()
        os.killpg(demo.pid, signal.SIGINT)
        rest = demo.communicate(timeout=120)[0]
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    assert demo.returncode == 130, "".join(lines) + rest
    assert "cleaning up" in rest
    assert ns.group(1) not in leftover_namespaces()
    mac = re.search(r"guest \(([0-9a-f:]{17})\)", "".join(lines))
    assert mac is not None
    assert not _qemu_running_for(mac.group(1))
    work = re.search(r"logs: (/\S+)/serve.log", "".join(lines))
    assert work is not None
    serving = subprocess.run(["pgrep", "-f", f"-c {work.group(1)}/config.toml"],
                             capture_output=True, text=True).stdout.split()
    assert serving == [], f"services left running: {serving}"
    assert not os.path.exists(work.group(1)), "the work folder should be removed"
