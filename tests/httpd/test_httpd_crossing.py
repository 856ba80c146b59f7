"""Under load, every answer belongs to its request: real gunicorn workers, real store.

Two gunicorn workers forked from one master share nothing of the bus but
the code: each must draw its own request ids, and the store must answer
each peer's requests and nobody else's. 400 named machines, their boot
scripts fetched interleaved from 32 connections at once: each script must
name its own machine, never another's, never the unknown-machine default.
"""

from __future__ import annotations

import http.client
import json
import shutil
import tempfile
import threading
from pathlib import Path

from astralboot.common.bus.client import SyncBusClient
from astralboot.common.config import load
from support.stack import Stack
from astralboot.common.messages import Health, HealthReply, MachineGet, MachineReply

from httpd_support import admin_token
from test_httpd_gunicorn import make_site

MACHINES = 400
ROUNDS = 5
CONNECTIONS = 32


def mac_of(i: int) -> str:
    return f"52:54:01:00:{i >> 8:02x}:{i & 255:02x}"


def test_two_workers_never_cross_boot_scripts() -> None:
    folder = Path(tempfile.mkdtemp(prefix="ab-x-"))
    try:
        config_path, port = make_site(folder, **{"http.workers": 2, "http.threads": 4})
        config = load(config_path)
        with Stack(config_path, services=("store", "httpd")):
            with SyncBusClient(config.bus.endpoint, deadline=10) as bus:
                # Named through httpd's API, as an operator would: these writes
                # come from the same workers that serve the scripts.
                token = admin_token(config.bus.endpoint)
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                for i in range(MACHINES):
                    conn.request("PATCH", f"/api/machines/{mac_of(i)}",
                                 body=json.dumps({"name": f"host-{i}", "os": "debian"}),
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {token}"})
                    response = conn.getresponse()
                    assert response.status == 200, response.read()
                    response.read()
                conn.close()
                for i in range(0, MACHINES, 57):
                    reply = bus.call(MachineGet(mac=mac_of(i)))
                    assert isinstance(reply, MachineReply) and reply.machine.name == f"host-{i}"
                # Requests for every machine, interleaved so that neighbouring
                # requests on the two workers are for different machines.
                order = [i for _ in range(ROUNDS) for i in range(MACHINES)]
                wrong: list[str] = []
                served = [0] * CONNECTIONS

                def fetch(k: int) -> None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    try:
                        for i in order[k::CONNECTIONS]:
                            conn.request("GET", f"/boot/debian/{mac_of(i)}")
                            response = conn.getresponse()
                            body = response.read().decode()
                            if response.status != 200 or f"hostname=host-{i} " not in body:
                                wrong.append(f"{mac_of(i)}: {response.status} "
                                             f"{body.splitlines()[-3:]}")
                            served[k] += 1
                    finally:
                        conn.close()

                threads = [threading.Thread(target=fetch, args=(k,)) for k in range(CONNECTIONS)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                print(f"{sum(served)} scripts, {len(wrong)} not for their own machine")
                assert sum(served) == MACHINES * ROUNDS
                assert wrong == [], f"{len(wrong)} crossed, e.g. {wrong[:3]}"
                health = bus.call(Health())
                assert isinstance(health, HealthReply)
                assert health.details["retries_answered"] == 0
                assert health.details["retries_joined"] == 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)
