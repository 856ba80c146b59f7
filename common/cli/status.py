"""``astralboot status`` and ``astralboot events``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time

from astralboot.common.bus.client import SyncBusClient
from astralboot.common.bus.security import client_curve
from astralboot.common.bus.events import EventSubscriber
from astralboot.common.names import printable
from astralboot.common.config import SERVICES, load, normalise_mac
from astralboot.common.health import ServiceHealth, check_all
from astralboot.common.messages import BootEvent, EventList, EventListReply
from astralboot.common.bus.schema import record_to_dict


def add_status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--service", action="append", choices=SERVICES,
                   help="check only this service (repeatable)")
    p.add_argument("--timeout", type=float, default=2.0,
                   help="seconds to wait for each service (default 2)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="ask again until every service is up, for at most this long "
                        "(after a start: dhcpd first listens for other DHCP servers)")


def _uptime(started: float | None) -> str:
    if not started:
        return "-"
    secs = int(time.time() - started)
    return f"{secs // 3600}h{secs % 3600 // 60:02d}m" if secs >= 3600 else f"{secs // 60}m{secs % 60:02d}s"


def _summary(h: ServiceHealth) -> str:
    if not h.up:
        return h.error or "no answer"
    keys = [k for k in ("leases.bound", "leases.offered", "packets", "transfers", "requests",
                        "events", "queries", "hosts", "feed.synced") if k in h.details]
    parts = [f"{k}={h.details[k]}" for k in keys]
    if h.details.get("ready") is False:
        parts.insert(0, "starting")
    return " ".join(parts)


def cmd_status(args: argparse.Namespace) -> int:
    config = load(args.config)
    services = tuple(args.service) if args.service else config.services
    results = check_all(config, services, args.timeout)
    deadline = time.monotonic() + args.wait
    while not all(h.ready for h in results) and time.monotonic() < deadline:
        time.sleep(0.5)
        results = check_all(config, services, args.timeout)
    if args.json:
        print(json.dumps([h.__dict__ for h in results], indent=2, default=str))
    else:
        print(f"{'SERVICE':8} {'STATE':9} {'PID':>7} {'UPTIME':>8}  {'WHERE':40} DETAILS")
        for h in results:
            state = ("up" if h.ready else "starting" if h.up and h.status == "ok"
                     else h.status if h.up else "DOWN")
            print(f"{h.service:8} {state:9} {h.pid or '-':>7} {_uptime(h.started):>8}  "
                  f"{h.where:40} {_summary(h)}")
    return 0 if all(h.ready for h in results) else 1


def add_events_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--mac", help="only this machine's events")
    p.add_argument("--limit", type=int, default=200, help="how many past events (default 200)")


def format_event(e: BootEvent) -> str:
    when = dt.datetime.fromtimestamp(e.time).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return (f"{when}  {e.mac}  {e.ip or '-':15}  {printable(e.service):6} "
            f"{printable(e.stage):14} {printable(e.detail)}")


def cmd_events(args: argparse.Namespace) -> int:
    config = load(args.config)
    mac = normalise_mac(args.mac) if args.mac else None

    def emit(e: BootEvent) -> None:
        print(json.dumps(record_to_dict(e)) if args.json else format_event(e), flush=True)

    # Subscribe (and have the store confirm it) before listing, so nothing
    # falls between the two.
    curve = client_curve(config, "admin")
    sub = EventSubscriber(config.bus.events, mac, curve=curve) if args.follow else None
    try:
        if sub is not None:
            sub.wait_subscribed(config.bus.deadline)
        with SyncBusClient(config.bus.endpoint, deadline=config.bus.deadline,
                           curve=curve) as client:
            reply = client.call(EventList(mac=mac, limit=args.limit))
        assert isinstance(reply, EventListReply)
        last_id = 0
        for e in reply.events:
            emit(e)
            last_id = max(last_id, e.id)
        if sub is None:
            return 0
        for e in sub:
            if e.id and e.id <= last_id:
                continue
            emit(e)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        sys.stderr.close()
        return 0
    finally:
        if sub is not None:
            sub.close()
    return 0
