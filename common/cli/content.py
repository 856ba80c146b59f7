"""Placeholder; filled in by its own change."""

import argparse



def add_publish_arguments(p: argparse.ArgumentParser) -> None:
    pass


def add_precache_arguments(p: argparse.ArgumentParser) -> None:
    pass



def cmd_publish(args: argparse.Namespace) -> int:
    raise NotImplementedError("cmd_publish")


def cmd_precache(args: argparse.Namespace) -> int:
    raise NotImplementedError("cmd_precache")

