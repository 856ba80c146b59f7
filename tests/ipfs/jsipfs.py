"""A real IPFS daemon for tests: js-ipfs 0.66.1 from this folder's node_modules.

``cd tests/ipfs && npm ci`` installs it (package-lock.json pins the tree
resolved with ``npm install ipfs@0.66.1 --before=2024-12-20``, which runs on
Node.js 20). :class:`IpfsNode` makes a repo on free loopback ports, starts
the daemon ``--offline`` (it never reaches out of the machine), waits until
its HTTP RPC API answers, and stops it on exit. Missing node_modules is an
error, never a skip: the tests that need IPFS must run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

# ipfshttpclient 0.7 passes an argument urllib3 deprecates; the warning is noise.
warnings.filterwarnings("ignore", message=".*'strict' parameter is no longer needed.*")

HERE = Path(__file__).resolve().parent
JSIPFS = HERE / "node_modules" / ".bin" / "jsipfs"


class IpfsNodeError(RuntimeError):
    """The test IPFS daemon could not be set up or started."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class IpfsNode:
    def __init__(self, folder: Path, *, start_timeout: float = 120.0) -> None:
        if not JSIPFS.exists():
            raise IpfsNodeError(f"{JSIPFS} is missing: run `cd {HERE} && npm ci` first")
        if shutil.which("node") is None:
            raise IpfsNodeError("node (Node.js 20) is not installed")
        self.folder = Path(folder)
        self.repo = self.folder / "repo"
        self.start_timeout = start_timeout
        self.api_port = free_port()
        self.api = f"/ip4/127.0.0.1/tcp/{self.api_port}"
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.log_path = self.folder / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._env = {**os.environ, "IPFS_PATH": str(self.repo)}

    # -- lifecycle ------------------------------------------------------------

    def init(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.repo / "config").exists():
            proc = subprocess.run([str(JSIPFS), "init", "--empty-repo"], env=self._env,
                                  capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                raise IpfsNodeError(f"jsipfs init failed:\n{proc.stdout}\n{proc.stderr}")
        # Edit the config directly: each `jsipfs config` call boots Node for seconds.
        config_path = self.repo / "config"
        config = json.loads(config_path.read_text())
        config["Bootstrap"] = []
        config.setdefault("Discovery", {})
        config["Discovery"]["MDNS"] = {"Enabled": False, "Interval": 10}
        config["Discovery"]["webRTCStar"] = {"Enabled": False}
        addresses = config.setdefault("Addresses", {})
        addresses["Delegates"] = []
        addresses["Swarm"] = [f"/ip4/127.0.0.1/tcp/{free_port()}"]
        addresses["API"] = self.api
        addresses["Gateway"] = f"/ip4/127.0.0.1/tcp/{free_port()}"
        addresses["RPC"] = f"/ip4/127.0.0.1/tcp/{free_port()}"
        config_path.write_text(json.dumps(config, indent=2))

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        (self.repo / "repo.lock").unlink(missing_ok=True)  # left by a hard kill
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(JSIPFS), "daemon", "--offline"], env=self._env,
                                     stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise IpfsNodeError(f"jsipfs daemon exited with {self.proc.returncode}:\n"
                                    f"{self.log_tail()}")
            if self.answers():
                return
            time.sleep(0.25)
        self.stop()
        raise IpfsNodeError(f"jsipfs daemon not ready after {self.start_timeout}s:\n"
                            f"{self.log_tail()}")

    def answers(self) -> bool:
        try:
            req = urllib.request.Request(f"{self.url}/api/v0/version", method="POST")
            with urllib.request.urlopen(req, timeout=2) as resp:
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> "IpfsNode":
        self.init()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers for tests ------------------------------------------------------

    def client(self, timeout: float = 30.0):  # type: ignore[no-untyped-def]
        import ipfshttpclient
        return ipfshttpclient.Client(self.api, timeout=timeout)

    def only_hash(self, data: bytes) -> str:
        """The CID ``data`` would get, without storing it (a block this node lacks)."""
        import io
        with warnings.catch_warnings():  # pytest resets the module-level filter
            warnings.simplefilter("ignore", FutureWarning)
            return self.client().add(io.BytesIO(data), only_hash=True)["Hash"]
