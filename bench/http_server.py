"""Run httpd with a chosen gunicorn worker class (bench/http.py compares them).

    python bench/http_server.py CONFIG [--worker-class gthread|sync] [--workers N] [--threads N]
"""

from __future__ import annotations

import os
import sys

if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)  # bench/http.py would shadow the standard library's http

import argparse  # noqa: E402

from astralboot.common import logs  # noqa: E402
from astralboot.common.config import load  # noqa: E402
from astralboot.services.httpd.server import run  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("--worker-class", default="gthread")
    p.add_argument("--workers", type=int)
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    config = load(args.config)
    logs.configure("warning", "httpd")
    return run(config, worker_class=args.worker_class, workers=args.workers,
               threads=args.threads)


if __name__ == "__main__":
    sys.exit(main())
