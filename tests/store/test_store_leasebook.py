"""The lease book alone (sans-IO): time passes by argument, not by sleeping.

Expiry, offer holds and quarantines last minutes to days in real use; here
the clock is a number the test moves. The same rules run against real
stores in test_store_allocation.py.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from astralboot.common.config import SubnetConfig
from astralboot.common.errors import ErrorCode
from astralboot.services.store.leases import (Client, LeaseBook, Refusal, Reservations, ip_int,
                                              ip_str)

NET = "10.0.0.0/24"
SERVER = IPv4Address("10.0.0.1")
HOLD, QUARANTINE, LEASE = 30.0, 600.0, 3600


def book(first: str = "10.0.0.10", last: str = "10.0.0.13",
         reservations: Reservations | None = None, offer_share: float = 1.0) -> LeaseBook:
    subnet = SubnetConfig(network=IPv4Network(NET), range_start=IPv4Address(first),
                          range_end=IPv4Address(last), gateway=IPv4Address("10.0.0.2"),
                          dns=(SERVER,), lease_time=LEASE, relayed=False)
    return LeaseBook([subnet], SERVER, offer_hold=HOLD, quarantine=QUARANTINE,
                     reservations=reservations, offer_share=offer_share)


def c(n: int) -> Client:
    return Client(f"02:00:00:00:00:{n:02x}")


def bind(b: LeaseBook, client: Client, now: float) -> str:
    lease = b.offer(NET, client, None, None, now)
    bound, _ = b.commit(NET, lease.ip, "select", client, None, now)
    return bound.ip


def test_address_helpers_are_strict() -> None:
    assert ip_int("10.0.0.1") == int(IPv4Address("10.0.0.1"))
    assert ip_str(ip_int("192.0.2.255")) == "192.0.2.255"
    for bad in ("10.0.0", "10.0.0.256", "010.0.0.1", "1", " 10.0.0.1", "10.0.0.1\n"):
        with pytest.raises(ValueError):
            ip_int(bad)


def test_an_unaccepted_offer_returns_to_the_pool_after_the_hold() -> None:
    b = book(last="10.0.0.10")  # one address
    assert b.offer(NET, c(1), None, None, 0).ip == "10.0.0.10"
    with pytest.raises(Refusal) as refused:
        b.offer(NET, c(2), None, None, HOLD - 1)
    assert refused.value.code is ErrorCode.POOL_EXHAUSTED
    assert b.offer(NET, c(2), None, None, HOLD + 1).ip == "10.0.0.10"


def test_expired_leases_are_reclaimed_oldest_first_after_fresh_ones() -> None:
    b = book()  # .10-.13
    ips = [bind(b, c(n), now=n) for n in range(4)]
    assert ips == ["10.0.0.10", "10.0.0.11", "10.0.0.12", "10.0.0.13"]
    with pytest.raises(Refusal):
        b.offer(NET, c(9), None, None, 100)
    later = LEASE + 10  # every lease has run out; the first ran out first
    assert b.offer(NET, c(9), None, None, later).ip == "10.0.0.10"
    assert b.by_address(ip_int("10.0.0.11")).shown_state(later) == "expired"  # type: ignore[union-attr]


def test_a_returning_client_gets_its_expired_address_back() -> None:
    b = book()
    mine = bind(b, c(1), 0)
    bind(b, c(2), 0)
    assert b.offer(NET, c(1), None, None, LEASE * 5).ip == mine


def test_renewal_extends_and_an_expired_binding_can_still_be_renewed() -> None:
    b = book()
    ip = bind(b, c(1), 0)
    lease, writes = b.commit(NET, ip, "renew", c(1), None, 100)
    assert lease.expires == 100 + LEASE and len(writes) == 1 and not writes[0].insert
    late, _ = b.commit(NET, ip, "rebind", c(1), None, LEASE * 3)  # nobody took it meanwhile
    assert late.state == "bound" and late.expires == LEASE * 4


def test_the_quarantine_ends() -> None:
    b = book(last="10.0.0.10")
    ip = bind(b, c(1), 0)
    writes = b.decline(ip, c(1), 10)
    assert writes and writes[0].row["state"] == "declined"
    with pytest.raises(Refusal):
        b.offer(NET, c(2), None, None, 10 + QUARANTINE - 1)
    assert b.offer(NET, c(2), None, None, 10 + QUARANTINE + 1).ip == ip


def test_freed_addresses_are_reused_longest_freed_first() -> None:
    b = book()
    ips = [bind(b, c(n), 0) for n in range(4)]
    for n in (2, 0, 3):  # released in this order
        b.release(ips[n], c(n), 10 + n)
    assert b.offer(NET, c(10), None, None, 20).ip == ips[2]
    assert b.offer(NET, c(11), None, None, 20).ip == ips[0]


def test_a_removed_reservation_gives_its_address_back() -> None:
    reservations = Reservations([("02:00:00:00:00:63", ip_int("10.0.0.10"))])
    b = book(last="10.0.0.11", reservations=reservations)
    assert bind(b, c(1), 0) == "10.0.0.11"
    with pytest.raises(Refusal):
        b.offer(NET, c(2), None, None, 0)
    reservations.remove("02:00:00:00:00:63")
    b.unreserved(ip_int("10.0.0.10"))
    assert b.offer(NET, c(2), None, None, 0).ip == "10.0.0.10"


def test_many_renewals_do_not_grow_memory_without_bound() -> None:
    b = book()
    ip = bind(b, c(1), 0)
    for t in range(1, 20_000):
        b.commit(NET, ip, "renew", c(1), None, t)
    pool = b.pools[NET]
    assert pool.queued_timers <= 2 * len(pool.leases) + 1024


OPS = st.lists(st.tuples(st.sampled_from(["offer", "select", "renew", "release", "decline",
                                          "reboot"]),
                         st.integers(0, 7),  # client
                         st.integers(9, 15),  # last octet asked for (some outside the range)
                         st.floats(0, 400)),  # time passing before the operation
               max_size=80)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_no_two_clients_ever_hold_one_address(ops: list[tuple[str, int, int, float]]) -> None:
    """Whatever the clients do, an address is never bound to two clients at once."""
    reservations = Reservations([("02:00:00:00:00:07", ip_int("10.0.0.12"))])
    b = book(reservations=reservations)
    holders: dict[str, tuple[str, float]] = {}  # ip -> (mac, expires) of acknowledged binds
    now = 0.0
    for op, n, octet, dt in ops:
        now += dt
        client, ip = c(n), f"10.0.0.{octet}"
        try:
            if op == "offer":
                lease = b.offer(NET, client, ip, None, now)
                assert lease.address not in b.pools[NET].excluded
                continue
            if op == "release":
                b.release(ip, client, now)
                if holders.get(ip, ("", 0))[0] == client.mac:
                    holders.pop(ip)
                continue
            if op == "decline":
                b.decline(ip, client, now)
                if holders.get(ip, ("", 0))[0] == client.mac:
                    holders.pop(ip)
                continue
            mode = {"select": "select", "renew": "renew", "reboot": "reboot"}[op]
            lease, _ = b.commit(NET, ip, mode, client, None, now)  # type: ignore[arg-type]
        except Refusal:
            continue
        mac, expires = holders.get(lease.ip, (client.mac, 0.0))
        assert mac == client.mac or expires <= now, f"{lease.ip} bound to {mac} and {client.mac}"
        assert lease.ip not in ("10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.255")
        assert lease.ip != "10.0.0.12" or client.mac == "02:00:00:00:00:07"
        # A client holds one address: moving drops its previous binding.
        for other_ip, (other_mac, _) in list(holders.items()):
            if other_mac == client.mac and other_ip != lease.ip:
                holders.pop(other_ip)
        holders[lease.ip] = (client.mac, lease.expires)


def test_a_discover_flood_holds_at_most_the_offer_share_of_the_pool() -> None:
    b = book(last="10.0.0.19", offer_share=0.5)  # ten addresses, five for offers
    pool = b.pools[NET]
    for n in range(127):  # made-up MACs that never REQUEST
        b.offer(NET, c(100 + n), None, None, now=n * 0.01)
        assert pool.outstanding_offers(n * 0.01) <= 5
    assert pool.reclaimed == 127 - 5
    # A real client still gets an address and binds it, at once.
    assert bind(b, c(1), now=2.0) in {f"10.0.0.{i}" for i in range(10, 20)}
    # The offers given up were the oldest: only the last four flooders hold one
    # (the real client's DISCOVER gave up a fifth).
    holders = {x.mac for x in pool.leases.values() if x.state == "offered" and x.held(2.0)}
    assert holders == {c(100 + n).mac for n in range(123, 127)}


def test_bound_clients_do_not_count_against_the_offer_cap() -> None:
    b = book(last="10.0.0.19", offer_share=0.5)
    bound = {bind(b, c(n), now=0) for n in range(8)}
    assert len(bound) == 8
    b.offer(NET, c(50), None, None, now=1)
    b.offer(NET, c(51), None, None, now=1)
    with pytest.raises(Refusal) as refused:
        b.offer(NET, c(52), None, None, now=1)  # no address left: the pool is full
    assert refused.value.code is ErrorCode.POOL_EXHAUSTED
    assert b.pools[NET].reclaimed == 0  # two offers are under the cap of five
