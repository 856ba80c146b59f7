"""Placeholder; filled in by its own change."""

import argparse



def add_leases_arguments(p: argparse.ArgumentParser) -> None:
    pass


def add_machines_arguments(p: argparse.ArgumentParser) -> None:
    pass


def cmd_leases(args: argparse.Namespace) -> int:
    raise NotImplementedError("cmd_leases")


def cmd_machines(args: argparse.Namespace) -> int:
    raise NotImplementedError("cmd_machines")
