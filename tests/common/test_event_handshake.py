"""The events socket's subscription handshake, against a real store.

Once ``EventSubscriber.wait_subscribed`` returns, the store streams that
MAC's events: one published the next instant arrives, with no sleep. With no
store it gives up within its deadline with a typed error, never hangs.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from astralboot.common.bus.client import SyncBusClient
from astralboot.common.bus.events import EventSubscriber, boot_event
from astralboot.common.config import load
from astralboot.common.errors import BusTimeout, ErrorCode, RemoteError
from support.stack import Stack, write_config

ROUNDS = 20  # fresh subscribers in a row: a lucky race would not win them all


def _mac(n: int) -> str:
    return f"52:54:00:00:01:{n:02x}"


def test_an_event_published_right_after_the_handshake_arrives(short_tmp: Path) -> None:
    config_path = write_config(short_tmp, interface="lo", address="192.0.2.1")
    config = load(config_path)
    with Stack(config_path, services=("store",)), SyncBusClient(config.bus.endpoint) as bus:
        for n in range(ROUNDS):
            mac = _mac(n)
            with EventSubscriber(config.bus.events, mac) as sub:
                reply = sub.wait_subscribed(timeout=10)
                assert reply.topics == (mac,) and reply.renew > 0
                bus.notify(boot_event("dhcpd", "dhcp.ack", mac, "192.0.2.100", f"round {n}"))
                event = sub.receive(timeout=10)
            assert event is not None, f"round {n}: the event after the handshake was lost"
            assert (event.mac, event.stage, event.detail) == (mac, "dhcp.ack", f"round {n}")


def test_a_subscriber_made_before_the_store_starts_is_confirmed_once_it_does(
        short_tmp: Path) -> None:
    config_path = write_config(short_tmp, interface="lo", address="192.0.2.1")
    config = load(config_path)
    mac = _mac(0xaa)
    with EventSubscriber(config.bus.events, mac) as sub:
        with Stack(config_path, services=("store",)), SyncBusClient(config.bus.endpoint) as bus:
            sub.wait_subscribed(timeout=10)
            bus.notify(boot_event("httpd", "http.script", mac, "192.0.2.100", "menu"))
            event = sub.receive(timeout=10)
    assert event is not None and (event.mac, event.stage) == (mac, "http.script")


def test_a_refused_subscription_is_a_remote_error_not_a_wait(short_tmp: Path) -> None:
    config_path = write_config(short_tmp, interface="lo", address="192.0.2.1")
    config = load(config_path)
    with Stack(config_path, services=("store",)):
        with EventSubscriber(config.bus.events, "not a mac") as sub:
            started = time.monotonic()
            with pytest.raises(RemoteError) as refused:
                sub.wait_subscribed(timeout=10)
            assert time.monotonic() - started < 5
    assert refused.value.code is ErrorCode.BAD_REQUEST
    assert "not a prefix of a lower-case MAC" in refused.value.detail


def test_with_no_store_the_handshake_fails_within_its_deadline(short_tmp: Path) -> None:
    config = load(write_config(short_tmp, interface="lo", address="192.0.2.1"))
    with EventSubscriber(config.bus.events, _mac(1)) as sub:
        started = time.monotonic()
        with pytest.raises(BusTimeout) as timed_out:
            sub.wait_subscribed(timeout=1.5)
        took = time.monotonic() - started
    assert 1.5 <= took < 3.0, took
    assert timed_out.value.kind == "event.subscribe"
    assert config.bus.events in str(timed_out.value)
    assert timed_out.value.attempts >= 2  # it asked again rather than wait on one send
