"""A Debian 12 container with systemd as PID 1, for deployment tests.

:func:`debian_root` builds a bookworm root with mmdebstrap once and caches
it; :class:`SystemdContainer` boots a throw-away overlay of it with
``systemd-nspawn --boot`` inside a lab namespace, waits until systemd is up,
runs commands in it, and halts it on exit. The cache is only ever the
read-only lower layer, so no test can change it.

Works without systemd on the host (see /work/shared/notes/systemd-nspawn.md):
``--keep-unit`` stops nspawn asking a host systemd for a scope, and each
container is started in a cgroup of its own, because nspawn makes its
payload/ and supervisor/ cgroups inside the one it starts in, and two
containers started from one cgroup would share them.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from astralboot.common.errors import AstralBootError
from astralboot.common.cli.demo.netns import Namespace

SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "iproute2", "util-linux",
    "ca-certificates", "curl", "procps", "iputils-ping", "netbase",
)
# mmdebstrap copies the host's name in; without it the container takes the machine's.
HOOKS = ('rm -f "$1/etc/hostname"',)
DEFAULT_CACHE = Path("/var/cache/astralboot-test")
CONTAINER_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                 "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb"}


class ContainerError(AstralBootError):
    """The root could not be built, or the container did not boot or stop."""


def _recipe() -> str:
    return "\n".join([SUITE, VARIANT, *PACKAGES, *HOOKS])


def root_folder(cache: Path = DEFAULT_CACHE) -> Path:
    """Where the root for this package list is cached; a new list gets a new folder."""
    return cache / f"{SUITE}-{hashlib.sha256(_recipe().encode()).hexdigest()[:12]}"


def debian_root(cache: Path = DEFAULT_CACHE) -> Path:
    """The cached bookworm root, built first if missing. Never write into it."""
    if shutil.which("mmdebstrap") is None:
        raise ContainerError("mmdebstrap is not installed (apt package mmdebstrap; run.sh)")
    root = root_folder(cache)
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second test run waits for the first build
        if not root.is_dir():
            for stale in cache.glob(".build-*"):  # left by a build that was killed
                _remove(stale)
            _build(root)
    return root


def _build(root: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=root.parent))
    try:
        # The root is a subfolder: mkdtemp's mode 0700 would otherwise become /'s.
        argv = ["mmdebstrap", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}",
                *[f"--customize-hook={hook}" for hook in HOOKS], SUITE, str(work / "root")]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise ContainerError(f"mmdebstrap exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        (work / "root").rename(root)  # atomic: a root either is complete or is not there
    finally:
        _remove(work)


class SystemdContainer:
    """``systemd-nspawn --boot`` on a throw-away overlay of ``root``.

    ``netns`` is the lab namespace the container joins (it then sees br0);
    it is required, because without one nspawn shares the host's network.
    ``binds`` maps host paths to container paths, bound read-only.
    """

    def __init__(self, root: Path, netns: Namespace, *,
                 binds: Mapping[str | Path, str] | None = None,
                 boot_timeout: float = 90, stop_timeout: float = 30) -> None:
        self.root = root
        self.netns = netns
        self.binds = dict(binds or {})
        self.boot_timeout = boot_timeout
        self.stop_timeout = stop_timeout
        self.machine = f"ab-{secrets.token_hex(3)}"
        self.work: Path | None = None  # upper and work layers, mount point, nspawn's log
        self.cgroups = _cgroup_folders(self.machine)
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self.copy_seconds = 0.0
        self.boot_seconds = 0.0
        self.output = ""  # nspawn's and the console's output, kept after close()

    # -- lifecycle -----------------------------------------------------------

    def __enter__(self) -> "SystemdContainer":
        try:
            self._mount_overlay()
            self._spawn()
            self._wait_running()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        clean = self.close()
        if not clean and exc_type is None:
            raise ContainerError(f"{self.machine} did not halt within {self.stop_timeout}s "
                                 f"and was killed:\n{self.log_tail()}")

    def _mount_overlay(self) -> None:
        start = time.monotonic()
        self.work = Path(tempfile.mkdtemp(prefix=f"{self.machine}-"))
        for name in ("upper", "work", "merged"):
            (self.work / name).mkdir()
        options = f"lowerdir={self.root},upperdir={self.work}/upper,workdir={self.work}/work"
        proc = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options,
                               str(self.work / "merged")], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ContainerError(f"overlay mount of {self.root} failed: {proc.stderr.strip()}")
        self.copy_seconds = time.monotonic() - start

    def _spawn(self) -> None:
        if shutil.which("systemd-nspawn") is None:
            raise ContainerError("systemd-nspawn is not installed "
                                 "(apt package systemd-container; run.sh)")
        argv = ["systemd-nspawn", "--boot", "--register=no", "--keep-unit",
                f"--machine={self.machine}", f"--directory={self.work}/merged",
                "--console=read-only", f"--network-namespace-path=/run/netns/{self.netns.name}"]
        argv += [f"--bind-ro={host}:{inside}" for host, inside in self.binds.items()]
        if os.path.exists("/dev/kvm"):
            argv.append("--bind=/dev/kvm")
        for folder in self.cgroups:
            folder.mkdir(parents=True)
        procs = " ".join(str(folder / "cgroup.procs") for folder in self.cgroups)
        # The same cgroup layout in the container on every host: pure cgroup v2,
        # as on a Debian 12 machine booted with systemd.
        env = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1", "CGROUP_PROCS": procs,
               "TERM": "dumb"}  # passed on to systemd: a console log without colours
        # The shell moves itself into the container's own cgroups, then becomes nspawn.
        enter = 'for f in $CGROUP_PROCS; do echo $$ > "$f"; done; exec "$@"'
        assert self.work is not None
        log = open(self.work / "nspawn.log", "wb")
        self.proc = subprocess.Popen(["sh", "-c", enter, "sh", *argv],
                                     stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, env=env)
        log.close()

    def _wait_running(self) -> None:
        start = time.monotonic()
        deadline = start + self.boot_timeout
        self.leader = self._find_leader(deadline)
        state = ""
        while time.monotonic() < deadline:
            # "offline" until systemd listens; --wait then blocks until start-up ends.
            left = max(1.0, deadline - time.monotonic())
            try:
                proc = self.run(["systemctl", "is-system-running", "--wait"], check=False,
                                timeout=left)
            except subprocess.TimeoutExpired:
                break
            state = proc.stdout.strip()
            if state in ("running", "degraded"):
                self.boot_seconds = time.monotonic() - start
                return
            if state not in ("offline", "initializing", "starting", ""):
                break
            self._check_alive()
            time.sleep(0.1)
        raise ContainerError(f"{self.machine}: systemd not up after "
                             f"{time.monotonic() - start:.0f}s (state {state!r}):\n"
                             f"{self.log_tail()}")

    def _find_leader(self, deadline: float) -> int:
        """The container's PID 1: nspawn's child, once it has become systemd."""
        assert self.proc is not None
        while time.monotonic() < deadline:
            self._check_alive()
            for pid in _children(self.proc.pid):
                try:
                    if os.readlink(f"/proc/{pid}/exe").endswith("/systemd"):
                        return pid
                except OSError:
                    pass
            time.sleep(0.05)
        raise ContainerError(f"{self.machine}: no systemd started within "
                             f"{self.boot_timeout}s:\n{self.log_tail()}")

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise ContainerError(f"systemd-nspawn exited {self.proc.returncode} while "
                                 f"booting {self.machine}:\n{self.log_tail()}")

    def close(self) -> bool:
        """Halt the container (killing it after stop_timeout), remove the overlay.

        Returns whether the halt was clean.
        """
        clean = True
        if self.proc is not None and self.proc.poll() is None:
            # nspawn passes SIGTERM on as SIGRTMIN+3: systemd halts in order.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                clean = False
        # What is left, a container that would not halt or one whose nspawn died
        # before it passed signals on, dies with its cgroups.
        for folder in self.cgroups:
            clean = _clear_cgroup(folder) and clean
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
        self.output = self._read_log()
        if self.work is not None:
            self._forget_nspawn_state()
            _remove(self.work)  # the overlay with it
        self.leader = 0
        return clean

    def _forget_nspawn_state(self) -> None:
        """Remove what nspawn keeps in /run and removes itself only when it exits
        cleanly (here /run is on disk, not a tmpfs, so it would pile up)."""
        state = Path("/run/systemd/nspawn")
        assert self.work is not None
        try:
            root = os.stat(self.work / "merged")  # the lock is named after the mounted root
            (state / "locks" / f"inode-{root.st_dev}:{root.st_ino}").unlink(missing_ok=True)
            (state / "propagate" / self.machine).rmdir()
        except OSError:
            pass

    # -- use -----------------------------------------------------------------

    def run(self, cmd: Sequence[str], *, check: bool = True, timeout: float | None = 120,
            **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in the container's namespaces, as root, with a clean environment.

        The process keeps the caller's cgroup and capabilities (nsenter);
        to run it as systemd would, use ``systemd-run --wait --pipe`` as cmd.
        """
        if not self.leader:
            raise ContainerError(f"{self.machine} is not running")
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        argv = ["nsenter", f"--target={self.leader}", "--all", "--root", "--wd", *cmd]
        proc = subprocess.run(argv, timeout=timeout, env=CONTAINER_ENV, **kw)
        if check and proc.returncode != 0:
            raise ContainerError(f"[{self.machine}] {' '.join(cmd)} exited {proc.returncode}:"
                                 f"\n{proc.stdout or ''}{proc.stderr or ''}")
        return proc

    def log_tail(self, lines: int = 60) -> str:
        text = self._read_log() or self.output
        text = "\n".join([line for line in text.splitlines() if line.strip()][-lines:])
        return text or "(no output from systemd-nspawn)"

    def _read_log(self) -> str:
        try:
            return (self.work / "nspawn.log").read_text(errors="replace") if self.work else ""
        except OSError:
            return ""


def _cgroup_folders(machine: str) -> list[Path]:
    """A new cgroup per hierarchy nspawn uses: name=systemd (v1) and the v2 one."""
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.procs").exists():  # pure cgroup v2
        hierarchies = [base]
    else:
        hierarchies = [base / name for name in ("systemd", "unified")
                       if (base / name / "cgroup.procs").exists()]
    return [h / "astralboot-test" / machine for h in hierarchies]


def _remove(path: Path) -> None:
    """``rm -rf``, after unmounting whatever is mounted inside (the overlay, or the
    /proc, /sys and /dev of an mmdebstrap that was killed): never delete through a mount."""
    mounts = [Path(line.split()[4]) for line in
              Path("/proc/self/mountinfo").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m == path or path in m.parents),
                        key=lambda m: len(m.parts), reverse=True):
        subprocess.run(["umount", "--lazy", str(mount)], capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _clear_cgroup(folder: Path, timeout: float = 10) -> bool:
    """Kill every process left in ``folder`` and remove it (nspawn leaves its cgroups
    behind); False if there was a process to kill."""
    empty = True
    deadline = time.monotonic() + timeout
    while folder.exists() and time.monotonic() < deadline:
        for procs in folder.rglob("cgroup.procs"):
            for pid in procs.read_text().split():
                empty = False
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for sub in sorted(folder.glob("**/"), key=lambda p: len(p.parts), reverse=True):
            try:
                sub.rmdir()
            except OSError:  # busy until the killed processes are gone
                time.sleep(0.05)
                break
    return empty
