"""Coverage-guided fuzzing of one target with atheris (libFuzzer).

    python tests/fuzz/run_atheris.py TARGET [--seeds DIR] [libFuzzer args...]

TARGET is a name in ``targets.TARGETS``. ``--seeds DIR`` writes the seed
corpus into DIR and fuzzes with DIR as the corpus (inputs that reach new
code are added to it). Every other argument goes to libFuzzer:
``-runs=N``, ``-max_total_time=S``, ``-seed=N``, ``-artifact_prefix=DIR/``,
or a saved crash file to replay it. The astralboot modules (and the
targets) are imported under ``atheris.instrument_imports()`` so that their
coverage guides the mutations. A broken invariant or any exception other
than the codec's own error stops the run with a traceback, and libFuzzer
saves the input as ``crash-<sha1>``.

:func:`fuzz` runs this script in a child process and reads libFuzzer's
figures; the tests and ``bench/fuzz.py`` use it.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
STARTED = "fuzzing from"  # the child's line with the wall-clock time of its first input


@dataclass(frozen=True)
class Outcome:
    """One libFuzzer run as it reported itself."""

    target: str
    returncode: int
    output: str  # libFuzzer's report and any traceback (stderr and stdout)
    executions: int
    seconds: float  # from the first input to the end of the run (start-up left out)
    status: str  # libFuzzer's last status line: "#N DONE cov: N ft: N corp: N/Nb ..."
    new_units: int
    crashes: tuple[Path, ...]  # inputs saved by libFuzzer (crash-, timeout-, oom-)

    @property
    def exec_per_sec(self) -> float:
        return self.executions / self.seconds if self.seconds > 0 else 0.0

    @property
    def coverage(self) -> str:
        """Edges, features and corpus ("cov: N ft: N corp: N/Nb") of the last status line."""
        found = re.search(r"cov: \d+ ft: \d+ corp: \S+", self.status)
        return found.group(0) if found else "no coverage line"

    @property
    def found(self) -> bool:
        return self.returncode != 0 or bool(self.crashes)

    def summary(self) -> str:
        return (f"{self.target}: {self.executions} runs in {self.seconds:.1f} s, "
                f"{self.exec_per_sec:.0f} exec/s, "
                f"{self.coverage}, {self.new_units} new inputs")


def _stat(output: str, name: str) -> int:
    found = re.search(rf"^stat::{name}:\s+(\d+)", output, re.MULTILINE)
    return int(found.group(1)) if found else 0


def _last_status(output: str) -> str:
    lines = re.findall(r"^#\d+\s+\w+\s+cov: .*$", output, re.MULTILINE)
    return lines[-1] if lines else ""


def fuzz(target: str, libfuzzer_args: list[str], *, seeds: Path, artifacts: Path,
         timeout: float | None = None) -> Outcome:
    """Run ``target`` in a child process over the seed corpus written to ``seeds``.

    Saved inputs go to ``artifacts``. ``timeout`` (seconds) bounds the child
    as a whole; libFuzzer's own limits (``-runs``, ``-max_total_time``) end it
    first.
    """
    artifacts.mkdir(parents=True, exist_ok=True)
    before = set(artifacts.iterdir())
    command = [sys.executable, str(HERE / "run_atheris.py"), target, "--seeds", str(seeds),
               f"-artifact_prefix={artifacts}/{target}-", "-print_final_stats=1",
               *libfuzzer_args]
    env = dict(os.environ, PYTHONHASHSEED="0")  # the same run for the same -seed
    done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace",
                          timeout=timeout, env=env, check=False)
    finished = time.time()
    output = done.stdout
    start = re.search(rf"^{STARTED} ([\d.]+)$", output, re.MULTILINE)
    # libFuzzer's own exec/s is whole executions per whole second: too coarse here.
    return Outcome(target=target, returncode=done.returncode, output=output,
                   executions=_stat(output, "number_of_executed_units"),
                   seconds=finished - float(start.group(1)) if start else 0.0,
                   status=_last_status(output), new_units=_stat(output, "new_units_added"),
                   crashes=tuple(sorted(set(artifacts.iterdir()) - before)))


class _Formatting(logging.Handler):
    """Formats every record and drops it: a log line that a peer can make
    fail to format is found, and the run's output stays libFuzzer's."""

    def emit(self, record: logging.LogRecord) -> None:
        record.getMessage()


def main(argv: list[str]) -> int:
    import atheris

    if not argv or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    target, rest = argv[0], argv[1:]
    seeds: Path | None = None
    if "--seeds" in rest:
        at = rest.index("--seeds")
        seeds = Path(rest[at + 1])
        del rest[at:at + 2]

    root = logging.getLogger()
    root.handlers[:] = [_Formatting()]
    root.setLevel(logging.DEBUG)

    # The targets too: their invariant checks then steer the mutations as well.
    with atheris.instrument_imports(include=["astralboot", "targets"]):
        import targets

    if target not in targets.TARGETS:
        print(f"unknown target {target!r}; have: {', '.join(targets.TARGETS)}",
              file=sys.stderr)
        return 2
    if seeds is not None:
        targets.write_seeds(target, seeds)
        rest.append(str(seeds))
    atheris.Setup([sys.argv[0], *rest], targets.TARGETS[target])
    print(f"{STARTED} {time.time()}", file=sys.stderr, flush=True)
    atheris.Fuzz()  # exits the process
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
