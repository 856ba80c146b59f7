"""``astralboot``: the command line, the public interface scripts drive.

Every command takes ``-c/--config PATH`` (default ``./config.toml``) and
``-v``/``-vv``/``-vvv`` wherever they appear. Exit status: 0 success, 1 the
command failed (a service down, a remote error), 2 bad usage or bad config.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable

from astralboot.common import __version__
from astralboot.common.errors import AstralBootError, BusError, ConfigError, StartupError
from astralboot.common.cli.options import add_common_options

EXIT_FAIL = 1
EXIT_USAGE = 2

# command → "module:function"; modules are imported only when their command runs,
# so `astralboot status` does not pay for falcon, SQLAlchemy or gunicorn.
COMMANDS: dict[str, str] = {
    "init": "astralboot.common.cli.setup:cmd_init",
    "config": "astralboot.common.cli.setup:cmd_config",
    "serve": "astralboot.common.cli.supervise:cmd_serve",
    "store": "astralboot.common.cli.services:cmd_store",
    "dhcpd": "astralboot.common.cli.services:cmd_dhcpd",
    "tftpd": "astralboot.common.cli.services:cmd_tftpd",
    "httpd": "astralboot.common.cli.services:cmd_httpd",
    "dnsd": "astralboot.common.cli.services:cmd_dnsd",
    "status": "astralboot.common.cli.status:cmd_status",
    "events": "astralboot.common.cli.status:cmd_events",
    "leases": "astralboot.common.cli.admin:cmd_leases",
    "machines": "astralboot.common.cli.admin:cmd_machines",
    "token": "astralboot.common.cli.tokens:cmd_token",
    "keys": "astralboot.common.cli.keys:cmd_keys",
    "publish": "astralboot.common.cli.content:cmd_publish",
    "precache": "astralboot.common.cli.content:cmd_precache",
    "fetch": "astralboot.common.cli.fetch:cmd_fetch",
    "demo": "astralboot.common.cli.demo:cmd_demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="astralboot",
        description="Network boot server: DHCP, TFTP, HTTP and DNS from power-on to an "
                    "unattended OS install.")
    parser.add_argument("--version", action="version", version=f"astralboot {__version__}")
    add_common_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        add_common_options(p)
        return p

    from astralboot.common.cli import (admin, content, demo, fetch, keys, setup,  # argument definitions only
                   status, supervise, tokens)
    setup.add_init_arguments(add("init", "write config.toml, by questions or by flags"))
    setup.add_config_arguments(add("config", "show the effective configuration"))
    supervise.add_arguments(add("serve", "run every configured service in the foreground"))
    for name, what in (("store", "the lease database and content store"),
                       ("dhcpd", "the DHCP server"), ("tftpd", "the TFTP server"),
                       ("httpd", "the HTTP server (gunicorn)"),
                       ("dnsd", "the DNS server ([dns] in config.toml)")):
        add(name, f"run only {what} (for supervisord and systemd)")
    status.add_status_arguments(add("status", "ask every service for its health"))
    status.add_events_arguments(add("events", "list or follow boot events"))
    admin.add_leases_arguments(add("leases", "list or import leases"))
    admin.add_machines_arguments(add("machines", "list, show or change machines"))
    tokens.add_arguments(add("token", "make, list or revoke admin API tokens"))
    keys.add_arguments(add("keys", "CURVE keys for a tcp:// bus: set up, create, list, revoke"))
    content.add_publish_arguments(add("publish", "add the data folder to IPFS, write refs.toml"))
    content.add_precache_arguments(add("precache", "fetch everything under the IPFS root"))
    fetch.add_fetch_arguments(add("fetch", "download an OS's images from upstream"))
    demo.add_arguments(add("demo", "boot a QEMU guest through the whole chain, in a namespace"))
    return parser


def _resolve(spec: str) -> Callable[[argparse.Namespace], int]:
    module, _, func = spec.partition(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = _resolve(COMMANDS[args.command])
    try:
        return int(handler(args) or 0)
    except ConfigError as exc:
        print(f"astralboot: bad configuration:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    except StartupError as exc:
        print(f"astralboot: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BusError as exc:
        print(f"astralboot: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except AstralBootError as exc:
        print(f"astralboot: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
