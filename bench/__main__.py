"""``python -m bench [NAME ...]``: run the benchmarks, each side by side with its peer.

Every benchmark builds its own namespace network, runs AstralBoot and the
peer (dnsmasq, Kea, nginx) in the same run, and prints a table with the
ratio. Figures drift between runs on shared machines: compare ratios.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)])
                  if not m.name.startswith("_") and "_" not in m.name)


def main(argv: list[str]) -> int:
    names = argv or available()
    unknown = [n for n in names if n not in available()]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; have: {', '.join(available())}",
              file=sys.stderr)
        return 2
    status = 0
    for name in names:
        print(f"\n### bench/{name}.py\n", flush=True)
        module = importlib.import_module(f"bench.{name}")
        status |= int(module.main([]) or 0)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
