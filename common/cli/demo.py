"""Placeholder; filled in by its own change."""

import argparse



def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def cmd_demo(args: argparse.Namespace) -> int:
    raise NotImplementedError("cmd_demo")
