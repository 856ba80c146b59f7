"""``astralboot leases`` and ``astralboot machines``: the store's data, over the bus."""

from __future__ import annotations

import argparse
import getpass
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any, get_args

from astralboot.common.bus.client import SyncBusClient
from astralboot.common.bus.security import client_curve
from astralboot.common.bus.schema import record_to_dict
from astralboot.common.config import load, normalise_mac
from astralboot.common.config.load import p_name, p_os_name
from astralboot.common.errors import ConfigError
from astralboot.common.messages import (LOADERS, MACHINE_FIELDS, ImportedLease, ImportReply,
                                        LeaseImport, LeaseList, LeaseListReply,
                        LeaseState, MachineGet, MachineList, MachineListReply, MachineRecord,
                        MachineReply, MachineSet)
from astralboot.common.names import printable
from astralboot.common.cli.options import add_common_options


def _client(args: argparse.Namespace) -> SyncBusClient:
    config = load(args.config)
    return SyncBusClient(config.bus.endpoint, deadline=config.bus.deadline,
                         curve=client_curve(config, "admin"))


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


# --- leases ------------------------------------------------------------------

def add_leases_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="current leases")
    add_common_options(ls)
    ls.add_argument("--state", choices=get_args(LeaseState))
    ls.add_argument("--json", action="store_true")
    imp = sub.add_parser("import", help="import the original server's machines.json")
    add_common_options(imp)
    imp.add_argument("file", type=Path)


def parse_legacy_leases(path: Path) -> list[ImportedLease]:
    """The original Go server's lease file: {"Leases": [{ID, MAC, IP, ...}]}."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, "(file)", "not found") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(path, "(file)", f"not a JSON lease file: {exc}") from None
    leases = doc.get("Leases") if isinstance(doc, dict) else None
    if not isinstance(leases, list):
        raise ConfigError(path, "Leases", "missing, or not a list")
    out = []
    for i, entry in enumerate(leases):
        key = f"Leases[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("IP"), str):
            raise ConfigError(path, key, "not a lease with an IP")
        try:
            mac = normalise_mac(entry["MAC"]) if entry.get("MAC") else None
            name = p_name(entry["Name"]) if entry.get("Name") else None
            os_name = p_os_name(entry["Distro"]) if entry.get("Distro") else None
        except ValueError as exc:
            raise ConfigError(path, key, str(exc)) from None
        created = None
        if isinstance(entry.get("Created"), str):
            created = _parse_go_time(entry["Created"])
        out.append(ImportedLease(ip=entry["IP"], mac=mac, active=bool(entry.get("Active")),
                                 reserved=bool(entry.get("Reserved")), os=os_name, name=name,
                                 machine_class=entry.get("Class") or None, created=created))
    return out


def _parse_go_time(text: str) -> float | None:
    # Go writes RFC 3339 with nanoseconds: 2018-07-31T20:43:46.028207932+08:00
    main, _, rest = text.partition(".")
    frac, zone = "", ""
    for i, ch in enumerate(rest):
        if not ch.isdigit():
            frac, zone = rest[:i], rest[i:]
            break
    else:
        frac = rest
    try:
        when = dt.datetime.fromisoformat(main + (f".{frac[:6]}" if frac else "") +
                                         zone.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.timestamp()


IMPORT_CHUNK = 500  # entries per LeaseImport message (~75 KB)


def cmd_leases(args: argparse.Namespace) -> int:
    if args.action == "import":
        entries = parse_legacy_leases(args.file)
        totals = ImportReply()
        with _client(args) as bus:
            # In chunks: a request frame is bounded (bus.frames.REQUEST_LIMITS),
            # and an import is idempotent, so a chunk that fails can be sent again.
            for start in range(0, len(entries), IMPORT_CHUNK):
                chunk = tuple(entries[start:start + IMPORT_CHUNK])
                reply = bus.call(LeaseImport(entries=chunk), deadline=60)
                assert isinstance(reply, ImportReply)
                totals = ImportReply(leases=totals.leases + reply.leases,
                                     machines=totals.machines + reply.machines,
                                     reserved=totals.reserved + reply.reserved,
                                     skipped=totals.skipped + reply.skipped)
        print(f"imported from {args.file}: {totals.leases} leases, {totals.machines} machines, "
              f"{totals.reserved} reserved addresses, {totals.skipped} skipped")
        return 0
    with _client(args) as bus:
        reply = bus.call(LeaseList(state=args.state))
    assert isinstance(reply, LeaseListReply)
    if args.json:
        print(json.dumps([_jsonable(record_to_dict(l)) for l in reply.leases], indent=2))
        return 0
    print(f"{'ADDRESS':15}  {'MAC':17}  {'STATE':8}  {'EXPIRES':19}  HOSTNAME")
    for lease in reply.leases:
        print(f"{lease.ip:15}  {lease.mac:17}  {lease.state:8}  {_when(lease.expires):19}  "
              f"{printable(lease.hostname)}")
    return 0


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.hex() if isinstance(v, bytes) else v) for k, v in d.items()}


# --- machines ----------------------------------------------------------------

def add_machines_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="every machine the store knows")
    add_common_options(ls)
    ls.add_argument("--os", help="only machines assigned this OS")
    ls.add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="one machine")
    add_common_options(show)
    show.add_argument("mac")
    show.add_argument("--json", action="store_true")
    st = sub.add_parser("set", help="change a machine (created if new)")
    add_common_options(st)
    st.add_argument("mac")
    st.add_argument("--os", help="OS folder to boot (e.g. debian); 'local' boots the disk")
    st.add_argument("--class", dest="machine_class", help="class from the OS's classes.toml")
    st.add_argument("--name", help="host name")
    st.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    once = st.add_mutually_exclusive_group()
    once.add_argument("--boot-once", dest="boot_once", action="store_true", default=None,
                      help="boot the installer once, then the local disk")
    once.add_argument("--no-boot-once", dest="boot_once", action="store_false")
    st.add_argument("--loader", choices=LOADERS,
                    help="what a UEFI machine is first handed: ipxe, or shim (Debian's signed "
                         "shim and GRUB, for Secure Boot); default: [uefi] loader")
    st.add_argument("--clear", action="append", default=[], choices=list(MACHINE_FIELDS),
                    help="empty a field (repeatable)")
    st.add_argument("--json", action="store_true")


def _print_machine(m: MachineRecord, as_json: bool) -> None:
    if as_json:
        print(json.dumps(record_to_dict(m), indent=2))
        return
    labels = ", ".join(f"{k}={v}" for k, v in sorted(m.labels.items())) or "-"
    for key, value in (("mac", m.mac), ("name", m.name), ("os", m.os or "-"),
                       ("class", m.machine_class or "-"), ("address", m.ip or "-"),
                       ("labels", labels), ("boot once", "yes" if m.boot_once else "no"),
                       ("loader", m.loader or "(default)"),
                       ("first seen", _when(m.first_seen)), ("last seen", _when(m.last_seen))):
        print(f"{key:11} {printable(value)}")


def cmd_machines(args: argparse.Namespace) -> int:
    with _client(args) as bus:
        if args.action == "list":
            reply = bus.call(MachineList(os=args.os))
            assert isinstance(reply, MachineListReply)
            if args.json:
                print(json.dumps([record_to_dict(m) for m in reply.machines], indent=2))
                return 0
            print(f"{'MAC':17}  {'NAME':16}  {'OS':10}  {'CLASS':10}  {'ADDRESS':15}  LAST SEEN")
            for m in reply.machines:
                print(f"{m.mac:17}  {printable(m.name):16}  {m.os or '-':10}  "
                      f"{m.machine_class or '-':10}  "
                      f"{m.ip or '-':15}  {_when(m.last_seen)}")
            return 0
        mac = _mac_arg(args.mac)
        if args.action == "show":
            reply = bus.call(MachineGet(mac=mac))
        else:
            reply = bus.call(_machine_set(args, mac))
        assert isinstance(reply, MachineReply)
        _print_machine(reply.machine, args.json)
    return 0


def _mac_arg(text: str) -> str:
    try:
        return normalise_mac(text)
    except ValueError as exc:
        print(f"astralboot machines: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _machine_set(args: argparse.Namespace, mac: str) -> MachineSet:
    labels = None
    if args.label:
        labels = {}
        for item in args.label:
            key, sep, value = item.partition("=")
            if not sep or not key:
                print(f"astralboot machines: --label {item!r} is not KEY=VALUE", file=sys.stderr)
                raise SystemExit(2)
            labels[key] = value
    try:
        if args.os:
            p_os_name(args.os)
        if args.name:
            p_name(args.name)
    except ValueError as exc:
        print(f"astralboot machines: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return MachineSet(mac=mac, os=args.os, machine_class=args.machine_class, name=args.name,
                      labels=labels, boot_once=args.boot_once, loader=args.loader,
                      clear=tuple(args.clear),
                      actor=f"cli:{getpass.getuser()}")
