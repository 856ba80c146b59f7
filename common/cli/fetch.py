"""``astralboot fetch <os>``: download an OS's images from upstream, verified.

What to fetch and how to check it is in ``boot/<os>/images/sources.toml``
of the data folder (see :mod:`astralboot.common.cli.images`).
"""

from __future__ import annotations

import argparse
import sys

from astralboot.common.config import load


def add_fetch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("os", nargs="+", help="OS folder name(s) under boot/, e.g. ubuntu flatcar")
    p.add_argument("--force", action="store_true",
                   help="download again even when a verified copy is there")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_fetch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from astralboot.common.cli.images import fetch

    config = load(args.config)

    def progress(label: str, total: int | None) -> tqdm:  # type: ignore[type-arg]
        return tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                    file=sys.stderr, disable=args.no_progress, leave=False)

    for os_name in args.os:
        for line in fetch(config.data, os_name, force=args.force, progress=progress):
            print(line)
    return 0
