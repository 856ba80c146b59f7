"""The subscription table: who gets which events, and every bound it keeps."""

from __future__ import annotations

import pytest

from astralboot.common.errors import ErrorCode
from astralboot.services.store.leases import Refusal
from astralboot.services.store.subscriptions import SubscriptionTable, valid_topic

MAC = "52:54:00:12:34:56"


@pytest.mark.parametrize("topic, ok", [
    ("", True), ("5", True), ("52", True), ("52:", True), ("52:54:00:12:34:56", True),
    ("52:54:00:12:34:567", False), ("52-54", False), ("5A", False), ("xyz", False),
    ("52:54:00:12:34:56:", False), (":", False),
])
def test_topics_are_prefixes_of_a_lower_case_mac(topic: str, ok: bool) -> None:
    assert valid_topic(topic) is ok


def test_events_go_to_the_peers_whose_prefix_matches() -> None:
    table = SubscriptionTable(lifetime=10)
    table.subscribe(b"all", "", ("",), now=0)
    table.subscribe(b"one", "", (MAC,), now=0)
    table.subscribe(b"vendor", "", ("52:54:00", "02:"), now=0)
    assert table.match(MAC) == {b"all", b"one", b"vendor"}
    assert table.match("02:00:00:00:00:01") == {b"all", b"vendor"}
    assert table.match("aa:bb:cc:dd:ee:ff") == {b"all"}
    table.subscribe(b"all", "", (), now=1)  # no topics: unsubscribe
    assert table.match("aa:bb:cc:dd:ee:ff") == set()
    # Renewing with other topics replaces the old ones.
    table.subscribe(b"vendor", "", ("aa",), now=2)
    assert table.match("02:00:00:00:00:01") == set()
    assert table.match("aa:bb:cc:dd:ee:ff") == {b"vendor"}


def test_subscriptions_expire_unless_renewed() -> None:
    table = SubscriptionTable(lifetime=10)
    table.subscribe(b"a", "", ("",), now=0)
    table.subscribe(b"b", "", ("",), now=0)
    table.subscribe(b"a", "", ("",), now=8)  # a renewal
    assert table.expire(now=10) == 1
    assert table.match(MAC) == {b"a"}
    assert table.expire(now=18) == 1 and len(table) == 0 and table.topics == 0


def test_every_dimension_is_bounded() -> None:
    table = SubscriptionTable(lifetime=10, per_peer=4, per_address=2, total=3)
    with pytest.raises(Refusal) as info:
        table.subscribe(b"a", "192.0.2.9", ("a", "b", "c", "d", "e"), now=0)
    assert info.value.code is ErrorCode.BAD_REQUEST
    with pytest.raises(Refusal):
        table.subscribe(b"a", "192.0.2.9", ("not a mac",), now=0)
    table.subscribe(b"a", "192.0.2.9", ("a",), now=0)
    table.subscribe(b"b", "192.0.2.9", ("b",), now=0)
    with pytest.raises(Refusal) as info:
        table.subscribe(b"c", "192.0.2.9", ("c",), now=0)  # third from one host
    assert info.value.code is ErrorCode.UNAVAILABLE
    table.subscribe(b"a", "192.0.2.9", ("a", "b"), now=1)  # a renewal is not a new peer
    table.subscribe(b"c", "198.18.0.5", ("c",), now=0)
    with pytest.raises(Refusal):
        table.subscribe(b"d", "198.18.0.6", ("d",), now=0)  # three in all
    table.drop(b"b")
    table.subscribe(b"d", "192.0.2.9", ("d",), now=0)  # room again
    assert len(table) == 3
