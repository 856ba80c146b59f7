"""HTTP benchmark: AstralBoot's httpd (gunicorn) against nginx, same files, same run.

    .venv/bin/python bench/httpd.py [--seconds 10] [--rounds 3] [--connections 32]
        [--worker-class httpd] [--workers 2] [--threads 4] [--initrd PATH]

Serves Debian's 40 MB netboot initrd (from the debian-installer-12-netboot-amd64
package, or --initrd) and the per-machine boot script /boot/debian/<mac>
from both servers on 127.0.0.1 and drives each with wrk. nginx serves the
same initrd with sendfile on, and the boot script as the static file
AstralBoot rendered. The store runs too (SQLite, data folder), so script
requests carry their real cost: a boot event per request on the bus.
Targets: large files at least 0.8x nginx, scripts at least 3,000 requests/s.
Loopback only; every run is bounded by --seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test helpers (support/)
from support.stack import Stack, write_config

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "common" / "bundled"
DEBIAN = Path("/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64")
MAC = "52:54:00:be:nc:01".replace("nc", "0c")

NGINX_CONF = """\
worker_processes {workers};
pid {folder}/nginx.pid;
error_log {folder}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 15;
    types {{ text/plain ipxe; application/octet-stream gz; }}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=2048;
        root {root};
        location /boot/ {{ default_type text/plain; }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def wrk(url: str, seconds: int, connections: int, threads: int = 2) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
                          "--latency", url], capture_output=True, text=True,
                         timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    unit = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[m.group(2)]  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(\w+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "bytes_per_s": float(m.group(1)) * unit,  # type: ignore[union-attr]
            "p99": f"{p99.group(1)}{p99.group(2)}" if p99 else "-",  # type: ignore[dict-item]
            "non2xx": int(errors.group(1)) if errors else 0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--file-connections", type=int, default=8)
    p.add_argument("--worker-class", default="httpd", choices=("httpd", "gthread", "sync"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--nginx-workers", default="auto")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternate the servers this many times; the best round of each counts "
                        "(a shared machine is noisy)")
    p.add_argument("--initrd", type=Path, default=DEBIAN / "initrd.gz")
    args = p.parse_args(argv)
    if shutil.which("wrk") is None or shutil.which("nginx") is None:
        print("needs wrk and nginx (Debian packages wrk, nginx-light)", file=sys.stderr)
        return 2

    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    folder = Path(tempfile.mkdtemp(prefix="ab-bench-"))
    folder.chmod(0o755)  # nginx workers run as an unprivileged user
    procs: list[subprocess.Popen[bytes]] = []
    try:
        data = folder / "data"
        shutil.copytree(BUNDLED, data)
        images = data / "boot" / "debian" / "images"
        shutil.copyfile(args.initrd, images / "initrd.gz")
        shutil.copyfile(DEBIAN / "linux", images / "linux") if (DEBIAN / "linux").exists() \
            else (images / "linux").write_bytes(b"\0" * 1024)
        port = free_port()
        config = write_config(folder, interface="lo", address="127.0.0.1",
                              network="127.0.0.0/8", range="127.0.0.100-127.0.0.199",
                              data=data, http_port=port,
                              extra={"log_level": "warning", "http.workers": args.workers,
                                     "http.threads": args.threads})
        with Stack(config, services=("store",)):
            httpd = subprocess.Popen([sys.executable, str(ROOT / "bench" / "httpd_server.py"),
                                      str(config), "--worker-class", args.worker_class,
                                      "--workers", str(args.workers),
                                      "--threads", str(args.threads)],
                                     start_new_session=True)
            procs.append(httpd)
            ab = f"http://127.0.0.1:{port}"
            wait_http(f"{ab}/api/health")
            script_path = f"/boot/debian/{MAC}"
            script = urllib.request.urlopen(ab + script_path).read()

            # nginx: the same initrd, and the boot script as a static file.
            www = folder / "www"
            (www / "image" / "debian").mkdir(parents=True)
            os.link(images / "initrd.gz", www / "image" / "debian" / "initrd.gz")
            (www / "boot" / "debian").mkdir(parents=True)
            (www / "boot" / "debian" / MAC).write_bytes(script)
            nport = free_port()
            (folder / "nginx.conf").write_text(NGINX_CONF.format(
                workers=args.nginx_workers, folder=folder, port=nport, root=www))
            nginx = subprocess.Popen(["nginx", "-c", str(folder / "nginx.conf"), "-g",
                                      "daemon off;"], start_new_session=True)
            procs.append(nginx)
            ng = f"http://127.0.0.1:{nport}"
            wait_http(ng + script_path)

            for url in (ab, ng):  # warm page cache and caches
                wrk(url + "/image/debian/initrd.gz", 2, 2)
                wrk(url + script_path, 2, 4)
            results: dict[tuple[str, str], dict[str, float]] = {}

            def keep(key: tuple[str, str], r: dict[str, float], metric: str) -> None:
                print(f"  round {key[0]:10} {key[1]:6} {r[metric]:>14,.0f} "
                      f"{'B/s' if metric == 'bytes_per_s' else 'req/s'}", flush=True)
                if key not in results or r[metric] > results[key][metric]:
                    results[key] = r
            for _ in range(args.rounds):
                for name, base in (("astralboot", ab), ("nginx", ng)):
                    keep((name, "initrd"), wrk(base + "/image/debian/initrd.gz", args.seconds,
                                               args.file_connections), "bytes_per_s")
                    keep((name, "script"), wrk(base + script_path, args.seconds,
                                               args.connections), "rps")
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(folder, ignore_errors=True)

    size = args.initrd.stat().st_size
    print(f"\nhttpd: gunicorn {args.worker_class}, {args.workers} workers x {args.threads} "
          f"threads; nginx workers {args.nginx_workers}; {os.cpu_count()} CPUs; wrk "
          f"{args.seconds}s, {args.file_connections} connections (initrd, {size / 1e6:.1f} MB), "
          f"{args.connections} connections (script); best of {args.rounds} alternating rounds; "
          f"load average before: {load_before}")
    print(f"{'':24}{'astralboot':>16}{'nginx':>16}{'ratio':>8}   target")
    a, n = results["astralboot", "initrd"], results["nginx", "initrd"]
    print(f"{'initrd, GB/s':24}{a['bytes_per_s'] / 1e9:>16.2f}{n['bytes_per_s'] / 1e9:>16.2f}"
          f"{a['bytes_per_s'] / n['bytes_per_s']:>8.2f}   >= 0.8x nginx")
    a, n = results["astralboot", "script"], results["nginx", "script"]
    print(f"{'boot script, req/s':24}{a['rps']:>16,.0f}{n['rps']:>16,.0f}"
          f"{a['rps'] / n['rps']:>8.2f}   >= 3,000 req/s")
    print(f"{'boot script, p99':24}{a['p99']:>16}{n['p99']:>16}")
    bad = sum(r["non2xx"] for r in results.values())
    if bad:
        print(f"non-2xx responses: {bad}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
