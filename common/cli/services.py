"""``astralboot store|dhcpd|tftpd|httpd|dnsd``: one service in the foreground.

The CLI (``common/cli/``) is the top layer: the only part of ``common/`` that
knows the services. It imports each only when its command runs, so that
``astralboot status`` does not pay for falcon, SQLAlchemy or gunicorn.

Each service package exposes ``run(config) -> int``; this module loads the
configuration, sets up logging and hands over. Exit status 2 means the
service could not start (the reason is on stderr) and should not be
restarted in a tight loop.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from astralboot.common import logs
from astralboot.common.config import Config, load

ENTRY_POINTS = {
    "store": "astralboot.services.store.server",
    "dhcpd": "astralboot.services.dhcpd.server",
    "tftpd": "astralboot.services.tftpd.server",
    "httpd": "astralboot.services.httpd.server",
    "dnsd": "astralboot.services.dnsd.service",
}


def astralboot_argv(*args: str) -> list[str]:
    """The command line that runs this installation's CLI (``serve`` starts its children so)."""
    return [sys.executable, "-m", "astralboot.common.cli", *args]


def load_config(args: argparse.Namespace, service: str | None = None) -> Config:
    config = load(args.config)
    logs.configure(logs.level_for(config.log_level, args.verbose), service)
    for warning in config.warnings:
        import logging
        logging.getLogger("astralboot.config").warning("%s", warning)
    return config


def run_service(name: str, args: argparse.Namespace) -> int:
    config = load_config(args, name)
    module = importlib.import_module(ENTRY_POINTS[name])
    return int(module.run(config))


def cmd_store(args: argparse.Namespace) -> int:
    return run_service("store", args)


def cmd_dhcpd(args: argparse.Namespace) -> int:
    return run_service("dhcpd", args)


def cmd_tftpd(args: argparse.Namespace) -> int:
    return run_service("tftpd", args)


def cmd_httpd(args: argparse.Namespace) -> int:
    return run_service("httpd", args)


def cmd_dnsd(args: argparse.Namespace) -> int:
    return run_service("dnsd", args)
