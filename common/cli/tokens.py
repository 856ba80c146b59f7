"""``astralboot token``: the admin API's bearer tokens.

``create`` draws the secret here, sends the store only its SHA-256, and
prints the secret once, alone on the last line (so ``| tail -1`` captures
it); ``--save`` also keeps it as this config's ``admin.token``.
"""

from __future__ import annotations

import argparse
import datetime as dt

from astralboot.common import tokens
from astralboot.common.bus.client import SyncBusClient
from astralboot.common.bus.security import client_curve
from astralboot.common.config import load
from astralboot.common.messages import Done, TokenCreate, TokenList, TokenListReply, TokenReply, TokenRevoke
from astralboot.common.cli.options import add_common_options


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="make a token; its secret is printed once")
    add_common_options(create)
    create.add_argument("name", help="what the token is for (shown in the audit events)")
    create.add_argument("--read-only", action="store_true",
                        help="may read the admin API, not change anything")
    create.add_argument("--save", action="store_true",
                        help="also keep it as admin.token beside config.toml (mode 0600)")
    ls = sub.add_parser("list", help="every token: name, scope, when made (never secrets)")
    add_common_options(ls)
    revoke = sub.add_parser("revoke", help="a token stops working at once")
    add_common_options(revoke)
    revoke.add_argument("name")


def cmd_token(args: argparse.Namespace) -> int:
    config = load(args.config)
    with SyncBusClient(config.bus.endpoint, deadline=config.bus.deadline,
                       curve=client_curve(config, "admin")) as bus:
        if args.action == "create":
            if not tokens.NAME.fullmatch(args.name):
                print(f"astralboot token: {args.name!r} is not a token name (letters, digits, "
                      ". _ -, at most 63)")
                return 2
            secret = tokens.new_secret()
            scope = "read" if args.read_only else "write"
            reply = bus.call(TokenCreate(name=args.name, scope=scope,
                                         digest=tokens.digest(secret)))
            assert isinstance(reply, TokenReply)
            if args.save:
                path = tokens.token_path(config.folder)
                tokens.save(path, secret)
                print(f"saved to {path}")
            print(f"token {args.name} ({scope}); it is shown only now:")
            print(secret)
            return 0
        if args.action == "revoke":
            assert isinstance(bus.call(TokenRevoke(name=args.name)), Done)
            print(f"token {args.name} revoked")
            return 0
        listed = bus.call(TokenList())
        assert isinstance(listed, TokenListReply)
        print(f"{'NAME':24}  {'SCOPE':5}  CREATED")
        for t in listed.tokens:
            when = dt.datetime.fromtimestamp(t.created).strftime("%Y-%m-%d %H:%M:%S")
            print(f"{t.name:24}  {t.scope:5}  {when}")
    return 0
