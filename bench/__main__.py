"""``python -m bench [NAME ...] [OPTIONS]``: run benchmarks, each side by side with its peer.

Options after the names go to each named benchmark (``./run.sh bench dhcp
--rates 2000,3000 --kea``); ``python -m bench NAME --help`` lists them.

Every benchmark builds its own namespace network, runs AstralBoot and the
peer (dnsmasq, Kea, nginx) in the same run, and prints a table with the
ratio. Each ``NAME.py`` here without an underscore is one (``dns``: dnsd
against dnsmasq with dnsperf); ``NAME_server.py`` and the like are the
processes they start. Figures drift between runs on shared machines: compare ratios.
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
    split = next((i for i, arg in enumerate(argv) if arg.startswith("-")), len(argv))
    names, options = argv[:split] or available(), argv[split:]
    if options and not argv[:split]:
        print("options need the benchmark they are for: python -m bench NAME [OPTIONS]",
              file=sys.stderr)
        return 2
    unknown = [n for n in names if n not in available()]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; have: {', '.join(available())}",
              file=sys.stderr)
        return 2
    status = 0
    for name in names:
        print(f"\n### bench/{name}.py\n", flush=True)
        module = importlib.import_module(f"bench.{name}")
        status |= int(module.main(options) or 0)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
