"""Options every command accepts, wherever they appear on the command line."""

from __future__ import annotations

import argparse


def add_common_options(p: argparse.ArgumentParser, top: bool = False) -> None:
    # Below the top level the defaults are suppressed, so a flag given before
    # the command is not overwritten by the subcommand's default.
    default = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    p.add_argument("-c", "--config", metavar="PATH", default=default("config.toml"),
                   help="configuration file (default: ./config.toml)")
    p.add_argument("-v", "--verbose", action="count", default=default(0),
                   help="more log output: -v info, -vv debug, -vvv trace")
