"""``astralboot keys``: the CURVE keys of a ``tcp://`` bus (see common/bus/security.py)."""

from __future__ import annotations

import argparse
import sys

from astralboot.common.bus import security
from astralboot.common.config import load
from astralboot.common.cli.options import add_common_options

LOCAL_ROLES = ("dhcpd", "tftpd", "httpd", "dnsd", "admin")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    setup = sub.add_parser("setup", help="the store's key pair and one admitted pair for each "
                                         "service on this host and the CLI")
    add_common_options(setup)
    setup.add_argument("--force", action="store_true", help="replace keys that exist")
    create = sub.add_parser("create", help="an admitted key pair for a service on another host")
    add_common_options(create)
    create.add_argument("name", help="e.g. httpd-rack2 (shown in the store's logs)")
    create.add_argument("--role", required=True, choices=LOCAL_ROLES)
    ls = sub.add_parser("list", help="the clients the store admits")
    add_common_options(ls)
    revoke = sub.add_parser("revoke", help="stop admitting a client (its next connection)")
    add_common_options(revoke)
    revoke.add_argument("name")


def cmd_keys(args: argparse.Namespace) -> int:
    config = load(args.config)
    folder = config.bus.keys
    clients = folder / security.CLIENTS
    if args.action == "setup":
        store_key = folder / "store.key"
        if store_key.exists() and not args.force:
            print(f"astralboot keys: {store_key} exists; --force replaces every key "
                  "(clients on other hosts then need new ones)", file=sys.stderr)
            return 2
        store = security.generate("store", "store")
        security.write(store_key, store, with_secret=True)
        security.write(folder / "store.pub", store, with_secret=False)
        for role in LOCAL_ROLES:
            pair = security.generate(role, role)
            security.write(folder / f"{role}.key", pair, with_secret=True)
            security.write(clients / f"{role}.pub", pair, with_secret=False)
        print(f"keys in {folder}: store.key, store.pub, and admitted {', '.join(LOCAL_ROLES)}")
        if config.bus.insecure:
            print("note: [bus] insecure = true; the keys are used once it is removed")
        return 0
    if args.action == "create":
        target = clients / f"{args.name}.pub"
        if target.exists():
            print(f"astralboot keys: {args.name} is admitted already (keys revoke it first)",
                  file=sys.stderr)
            return 2
        try:
            pair = security.generate(args.name, args.role)
        except ValueError as exc:
            print(f"astralboot keys: {exc}", file=sys.stderr)
            return 2
        secret_file = folder / f"{args.name}.key"
        security.write(secret_file, pair, with_secret=True)
        security.write(target, pair, with_secret=False)
        print(f"admitted {args.name} ({args.role}). On its host, put {secret_file} in the "
              f"key folder as {args.role}.key, with {folder / 'store.pub'}; then delete "
              f"{secret_file} here.")
        return 0
    if args.action == "revoke":
        target = clients / f"{args.name}.pub"
        if not target.exists():
            print(f"astralboot keys: no admitted client {args.name}", file=sys.stderr)
            return 1
        target.unlink()
        print(f"{args.name} is no longer admitted (from its next connection)")
        return 0
    print(f"{'NAME':24}  {'ROLE':6}  PUBLIC KEY")
    for pair in sorted(security.admitted(folder).values(), key=lambda p: p.name):
        print(f"{pair.name:24}  {pair.role:6}  {pair.public}")
    return 0
