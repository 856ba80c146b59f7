"""Fuzzing: each target of tests/fuzz for a fixed time, coverage-guided (atheris).

    .venv/bin/python bench/fuzz.py [--seconds 60] [--seed 0] [--keep DIR] [TARGET ...]
    .venv/bin/python -m bench fuzz

The targets are what the network can send: a DHCP datagram through the
decoder and both policies (dhcp_server), a TFTP datagram (tftp_packet), a
bus frame to the store and to a front end (bus_request, bus_reply), a DNS
query to dnsd and an upstream's reply to its forwarder (dns_query,
dns_upstream_reply); see
tests/fuzz/targets.py for the invariants each checks. Every target starts
from the seed corpus of real packets and runs alone for --seconds on one
core. Reported: executions, executions per second, libFuzzer's coverage
line, and whether anything was found; a found input is kept (in --keep, or
a new temporary folder that is printed) and replays with
``python tests/fuzz/run_atheris.py TARGET FILE``. CI runs the same targets
for a fixed number of inputs (tests/fuzz/test_fuzz.py); this runs them for
as long as you like. There is no peer to run side by side: the figures are
this code's own.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

FUZZ = Path(__file__).resolve().parents[1] / "tests" / "fuzz"
sys.path.insert(0, str(FUZZ))
from run_atheris import Outcome, fuzz
from targets import TARGETS


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench/fuzz.py", description=__doc__.splitlines()[0])
    p.add_argument("targets", nargs="*", metavar="TARGET",
                   help=f"default: all of {', '.join(TARGETS)}")
    p.add_argument("--seconds", type=int, default=60, help="per target (default 60)")
    p.add_argument("--seed", type=int, default=0, help="libFuzzer's -seed (0: random)")
    p.add_argument("--keep", type=Path,
                   help="folder for the corpora and anything found (default: a temporary "
                        "one, removed unless something was found)")
    args = p.parse_args(argv)
    names = args.targets or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        p.error(f"unknown target(s) {', '.join(unknown)}; have: {', '.join(TARGETS)}")

    work = args.keep or Path(tempfile.mkdtemp(prefix="ab-fuzz-"))
    print(f"{len(names)} target(s), {args.seconds} s each, one core; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'target':12} {'runs':>10} {'exec/s':>8}  {'coverage':40} found")
    outcomes: list[Outcome] = []
    for name in names:
        outcome = fuzz(name, [f"-max_total_time={args.seconds}", f"-seed={args.seed}"],
                       seeds=work / name, artifacts=work / "found",
                       timeout=args.seconds + 300)
        outcomes.append(outcome)
        found = ", ".join(str(path) for path in outcome.crashes) or (
            f"exit {outcome.returncode}" if outcome.returncode else "nothing")
        print(f"{name:12} {outcome.executions:>10,} {outcome.exec_per_sec:>8,.0f}  "
              f"{outcome.coverage:40} {found}", flush=True)

    failed = [o for o in outcomes if o.found]
    for outcome in failed:
        print(f"\n--- {outcome.target}: the end of libFuzzer's report ---")
        print("\n".join(outcome.output.splitlines()[-40:]))
    if failed:
        print(f"\nfound inputs and corpora kept in {work}")
    elif args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"\ncorpora kept in {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
