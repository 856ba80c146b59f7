"""``astralboot init`` and ``astralboot config show``."""

from __future__ import annotations

import argparse

from ..config import load, render


def add_init_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--non-interactive", action="store_true")


def cmd_init(args: argparse.Namespace) -> int:
    raise NotImplementedError("init")


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["show"], help="show: print every effective setting")


def cmd_config(args: argparse.Namespace) -> int:
    print(render(load(args.config)), end="")
    return 0
