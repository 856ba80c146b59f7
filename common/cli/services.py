"""``astralboot store|dhcpd|tftpd|httpd``: one service in the foreground.

Each service package exposes ``run(config) -> int``; this module loads the
configuration, sets up logging and hands over. Exit status 2 means the
service could not start (the reason is on stderr) and should not be
restarted in a tight loop.
"""

from __future__ import annotations

import argparse
import importlib

from .. import logs
from ..config import Config, load

ENTRY_POINTS = {
    "store": "astralboot.services.store.server",
    "dhcpd": "astralboot.services.dhcpd.server",
    "tftpd": "astralboot.services.tftpd.server",
    "httpd": "astralboot.services.httpd.server",
}


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
