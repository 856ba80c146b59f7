"""Placeholder; filled in by its own change."""

import argparse


def add_fetch_arguments(p: argparse.ArgumentParser) -> None:
    pass


def cmd_fetch(args: argparse.Namespace) -> int:
    raise NotImplementedError("cmd_fetch")
