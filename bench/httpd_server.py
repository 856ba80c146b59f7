"""Run httpd with a chosen gunicorn worker class (bench/httpd.py compares them).

    python bench/httpd_server.py CONFIG [--worker-class httpd|gthread|sync] [--workers N] [--threads N]
"""

from __future__ import annotations

import argparse
import sys

from astralboot.common import logs
from astralboot.common.config import load
from astralboot.services.httpd.server import run


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("--worker-class", default="httpd",
                   help="httpd: the worker class httpd runs; gthread, sync: gunicorn's")
    p.add_argument("--workers", type=int)
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    config = load(args.config)
    logs.configure("warning", "httpd")
    worker_class = None if args.worker_class == "httpd" else args.worker_class
    return run(config, worker_class=worker_class, workers=args.workers, threads=args.threads)


if __name__ == "__main__":
    sys.exit(main())
