"""One bus request from wherever this runs (a client namespace), as a given key.

    python bus_probe.py ENDPOINT STORE_PUB|- KEYFILE|- KIND [MAC]

KIND is health or machine.set; prints one JSON line: the reply's kind and
code, or "timeout". ``-`` for the key files means no CURVE at all.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from astralboot.common.bus import security
from astralboot.common.bus.client import SyncBusClient
from astralboot.common.errors import BusTimeout
from astralboot.common.messages import ErrorReply, Health, MachineSet


def main(endpoint: str, store_pub: str, keyfile: str, kind: str, mac: str = "") -> int:
    curve = None
    if keyfile != "-":
        mine = security.read(Path(keyfile), need_secret=True)
        server = security.read(Path(store_pub))
        assert mine.secret is not None
        curve = security.ClientCurve(mine.public.encode(), mine.secret.encode(),
                                     server.public.encode())
    request = Health() if kind == "health" else MachineSet(mac=mac, os="debian",
                                                            name="probe-set")
    with SyncBusClient(endpoint, deadline=2, retries=1, curve=curve) as bus:
        try:
            reply = bus.request(request)
        except BusTimeout:
            print(json.dumps({"reply": "timeout"}))
            return 0
    code = reply.code if isinstance(reply, ErrorReply) else None
    print(json.dumps({"reply": reply.kind, "code": code}))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
