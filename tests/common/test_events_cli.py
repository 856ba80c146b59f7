"""``astralboot events`` against a real store: listing, filtering, following."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from astralboot.common.bus.client import SyncBusClient
from astralboot.common.bus.events import boot_event
from astralboot.common.config import load
from support.stack import Stack, astralboot_argv, write_config

A = "52:54:00:00:00:0a"
B = "52:54:00:00:00:0b"


def _report(endpoint: str, *events: tuple[str, str, str]) -> None:
    with SyncBusClient(endpoint) as bus:
        for mac, stage, detail in events:
            bus.notify(boot_event("dhcpd", stage, mac, "192.0.2.100", detail))


def _wait_listed(stack: Stack, count: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 20
    while True:
        out = stack.cli("events", "--json").stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_events_lists_filters_and_follows(short_tmp: Path) -> None:
    config_path = write_config(short_tmp, interface="lo", address="192.0.2.1")
    config = load(config_path)
    with Stack(config_path, services=("store",)) as stack:
        _report(config.bus.endpoint, (A, "dhcp.offer", "undionly.kpxe"),
                (B, "dhcp.offer", "snponly.efi"), (A, "dhcp.ack", "select"))
        rows = _wait_listed(stack, 3)
        assert [(r["mac"], r["stage"]) for r in rows] == [
            (A, "dhcp.offer"), (B, "dhcp.offer"), (A, "dhcp.ack")]
        assert all(r["service"] == "dhcpd" and r["id"] for r in rows)

        only_b = stack.cli("events", "--mac", B.upper().replace(":", "-")).stdout
        assert "snponly.efi" in only_b and A not in only_b

        follow = subprocess.Popen(stack.argv("events", "--follow", "--json", "--mac", A,
                                             "-c", str(config_path)),
                                  stdout=subprocess.PIPE, text=True)
        try:
            past = [json.loads(follow.stdout.readline()) for _ in range(2)]
            assert [p["stage"] for p in past] == ["dhcp.offer", "dhcp.ack"]
            # --follow lists the past only once the store confirmed its subscription
            _report(config.bus.endpoint, (B, "http.script", "menu"),
                    (A, "http.script", "debian/start"))
            live = json.loads(follow.stdout.readline())
            assert (live["mac"], live["stage"], live["detail"]) == (A, "http.script",
                                                                    "debian/start")
        finally:
            follow.terminate()
            follow.wait(10)


def test_events_says_the_store_is_down_within_its_deadline(short_tmp: Path) -> None:
    config_path = write_config(short_tmp, interface="lo", address="192.0.2.1",
                               extra={"bus.deadline": 1.0})
    started = time.monotonic()
    result = subprocess.run(astralboot_argv("events", "-c", str(config_path)),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "no reply to event.list" in result.stderr
    assert time.monotonic() - started < 10


def test_what_clients_chose_is_printed_escaped_never_run() -> None:
    from astralboot.common.cli.status import format_event
    from astralboot.common.messages import BootEvent
    line = format_event(BootEvent(time=0.0, mac=A, service="dhcpd", stage="dhcp.ack",
                                  detail="host\x1b]0;pwned\x07\x1b[2J"))
    assert "\x1b" not in line and "\x07" not in line
    assert line.endswith("host\\x1b]0;pwned\\x07\\x1b[2J")
