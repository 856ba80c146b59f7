"""Placeholder; filled in by its own change."""

import argparse



def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def cmd_serve(args: argparse.Namespace) -> int:
    raise NotImplementedError("cmd_serve")
