"""The store as a process: bad frames, health, start-up failures, clean stops."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq

from astralboot.common.bus.frames import pack, unpack
from astralboot.common.bus.schema import PROTOCOL_VERSION
from support.stack import astralboot_argv
from astralboot.common.messages import ErrorReply, Health, HealthReply, LeaseGrant, LeaseOffer

from store_lab import NETWORK, StoreLab, write_store_config


def _dealer(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def _answer(sock: zmq.Socket, timeout: float = 5.0) -> Any:
    if not sock.poll(int(timeout * 1000)):
        return None
    return unpack(sock.recv_multipart()[-1])


def test_bad_frames_and_unknown_kinds_leave_the_store_serving(store_factory: Any) -> None:
    store: StoreLab = store_factory()
    sock = _dealer(store.config.bus.endpoint)
    try:
        # Unreadable: dropped without an answer.
        for junk in (b"", b"\xc1\xff\x00", msgpack.packb({"not": "a frame"}),
                     msgpack.packb([PROTOCOL_VERSION, "health", "id?", {}])):
            sock.send_multipart([b"", junk])
        sock.send_multipart([b"only-one-frame"])
        # Readable enough to answer: a typed bad_request for each.
        answerable = {
            11: msgpack.packb([PROTOCOL_VERSION, "lease.teleport", 11, {}]),
            12: msgpack.packb([PROTOCOL_VERSION + 7, "health", 12, {}]),
            13: msgpack.packb([PROTOCOL_VERSION, "lease.offer", 13, {"mac": 5, "subnet": ""}]),
            14: msgpack.packb([PROTOCOL_VERSION, "lease.offer", 14, {}]),
            15: msgpack.packb([PROTOCOL_VERSION, "ok", 15, {}]),  # a reply is no request
            16: msgpack.packb([PROTOCOL_VERSION, "lease.offer", 16, []]),
        }
        for payload in answerable.values():
            sock.send_multipart([b"", payload])
        replies = {}
        for _ in answerable:
            reply = _answer(sock)
            assert isinstance(reply, ErrorReply), reply
            replies[reply.request_id] = reply.code
        assert replies == {rid: "bad_request" for rid in answerable}
        # Still serving, and it counted what it refused.
        sock.send_multipart([b"", pack(LeaseOffer(mac="52:54:00:01:02:03", subnet=NETWORK), 99)])
        assert isinstance(_answer(sock), LeaseGrant)
        health = store.call(Health())
        assert isinstance(health, HealthReply) and health.details["ready"] is True
        assert health.details["malformed"] == 11
    finally:
        sock.close()


def test_health_says_what_the_store_holds(store_factory: Any) -> None:
    store: StoreLab = store_factory()
    health = store.call(Health())
    assert isinstance(health, HealthReply)
    assert (health.service, health.status) == ("store", "ok")
    d = health.details
    assert d["ready"] is True and d["leases.bound"] == 0 and d["leases.offered"] == 0
    assert d[f"pool.{NETWORK}.size"] == 99 - 2  # .1-.99 less the server and gateway
    for key in ("events", "machines", "commit.batches", "commit.max_batch",
                "commit.last_ms", "database", "content"):
        assert key in d
    status = subprocess.run(astralboot_argv("status", "--service", "store", "-c",
                                            str(store.config_path)),
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "leases.bound=0" in status.stdout


def _store_exit(config: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(astralboot_argv("store", "-c", str(config)), capture_output=True,
                          text=True, timeout=timeout)


def test_a_second_store_on_the_same_endpoint_refuses_to_start(store_factory: Any) -> None:
    store: StoreLab = store_factory()
    second = _store_exit(store.config_path)
    assert second.returncode == 2
    assert "another process already serves" in second.stderr
    assert isinstance(store.call(Health()), HealthReply)  # the first one is unharmed


def test_an_unreachable_database_is_a_startup_error(short_tmp: Path) -> None:
    config = write_store_config(short_tmp, "postgresql://postgres@127.0.0.1:1/nowhere")
    started = time.monotonic()
    done = _store_exit(config)
    assert done.returncode == 2
    assert "store: cannot start: database postgresql+psycopg://postgres@127.0.0.1:1/nowhere" \
        in done.stderr
    assert time.monotonic() - started < 60


def test_sigterm_stops_the_store_cleanly(store_factory: Any) -> None:
    store: StoreLab = store_factory()
    assert isinstance(store.call(LeaseOffer(mac="52:54:00:01:02:04", subnet=NETWORK)),
                      LeaseGrant)
    assert store.stack.stop_one("store") == 0
    socket_file = Path(store.config.bus.endpoint.removeprefix("ipc://"))
    assert not socket_file.exists()
    store.start()  # and it comes back on the same endpoint
    assert isinstance(store.call(Health()), HealthReply)
