"""Every allocation rule, asked of a real store process over the bus, on both backends.

The module shares one store per backend (``rules_store``); each test uses
MACs of its own, so the tests do not see each other's leases.
"""

from __future__ import annotations

import secrets
import time

import pytest

from astralboot.common.messages import (Done, ErrorReply, LeaseCommit, LeaseDecline, LeaseList,
                                        LeaseListReply, LeaseLookup, LeaseOffer, LeaseRelease,
                                        LeaseGrant, LeaseReply)

from store_lab import (NETWORK, RESERVED_IP, RESERVED_MAC, SMALL, STATIC_IP, STATIC_MAC,
                       StoreLab)


def new_mac() -> str:
    return "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))


def offer(store: StoreLab, mac: str, subnet: str = NETWORK, **kw: object) -> LeaseGrant:
    reply = store.call(LeaseOffer(mac=mac, subnet=subnet, **kw))  # type: ignore[arg-type]
    assert isinstance(reply, LeaseGrant), reply
    return reply


def commit(store: StoreLab, mac: str, ip: str, mode: str = "select", subnet: str = NETWORK,
           **kw: object) -> LeaseGrant | ErrorReply:
    reply = store.call(LeaseCommit(mac=mac, subnet=subnet, ip=ip, mode=mode, **kw))  # type: ignore[arg-type]
    assert isinstance(reply, (LeaseGrant, ErrorReply)), reply
    return reply


def bind(store: StoreLab, mac: str, subnet: str = NETWORK, **kw: object) -> str:
    ip = offer(store, mac, subnet, **kw).ip
    reply = commit(store, mac, ip, subnet=subnet,
                   **{k: v for k, v in kw.items() if k in ("client_id", "hostname")})
    assert isinstance(reply, LeaseGrant) and reply.state == "bound", reply
    return ip


def error_code(reply: object) -> str | None:
    return reply.code if isinstance(reply, ErrorReply) else None


def test_offer_holds_an_address_and_commit_binds_it(rules_store: StoreLab) -> None:
    mac = new_mac()
    before = time.time()
    offered = offer(rules_store, mac, hostname="web1")
    assert offered.state == "offered"
    assert offered.lease_time == rules_store.config.dhcp.lease_time
    assert before + 2 <= offered.expires <= time.time() + 2  # offer_hold = 2
    assert offered.name is None and offered.os is None  # never seen before
    held = rules_store.call(LeaseLookup(mac=mac))
    assert isinstance(held, LeaseReply)
    assert (held.lease.ip, held.lease.state, held.lease.subnet) == (offered.ip, "offered",
                                                                   NETWORK)

    bound = commit(rules_store, mac, offered.ip, hostname="web1")
    assert isinstance(bound, LeaseGrant)
    assert bound.state == "bound" and bound.ip == offered.ip
    assert bound.expires >= before + rules_store.config.dhcp.lease_time
    # Named as the original server named machines: node + the address's offset.
    assert bound.name == f"node{offered.ip.rsplit('.', 1)[1]}"
    looked = rules_store.call(LeaseLookup(mac=mac))
    assert isinstance(looked, LeaseReply) and looked.lease.hostname == "web1"
    machine = looked.machine
    assert machine is not None and machine.mac == mac and machine.ip == offered.ip
    assert machine.name == bound.name
    assert machine.first_seen >= before and machine.last_seen >= machine.first_seen
    # Seen once, the machine comes back with the next offer.
    again = offer(rules_store, mac)
    assert again.name == machine.name


def test_unknown_subnet_is_not_found(rules_store: StoreLab) -> None:
    mac = new_mac()
    assert error_code(rules_store.call(LeaseOffer(mac=mac, subnet="10.9.9.0/24"))) == "not_found"
    assert error_code(commit(rules_store, mac, "10.9.9.5", subnet="10.9.9.0/24")) == "not_found"


def test_same_client_gets_its_address_back(rules_store: StoreLab) -> None:
    mac = new_mac()
    ip = bind(rules_store, mac)
    assert offer(rules_store, mac).ip == ip  # while bound
    assert isinstance(rules_store.call(LeaseRelease(mac=mac, ip=ip)), Done)
    for _ in range(3):  # others come and go
        bind(rules_store, new_mac())
    assert offer(rules_store, mac).ip == ip  # after its release, still its own
    assert isinstance(commit(rules_store, mac, ip), LeaseGrant)


def test_client_identifier_names_the_client(rules_store: StoreLab) -> None:
    cid = b"\x01" + secrets.token_bytes(6)
    first, second = new_mac(), new_mac()
    ip = bind(rules_store, first, client_id=cid)
    # The same client identifier from another NIC is the same client...
    assert offer(rules_store, second, client_id=cid).ip == ip
    # ...and another identifier on the first MAC is another client.
    assert offer(rules_store, first, client_id=b"\x01other" + cid).ip != ip


def test_reservation_wins_and_names_the_machine(rules_store: StoreLab) -> None:
    offered = offer(rules_store, RESERVED_MAC, requested_ip="192.0.2.50")
    assert offered.ip == RESERVED_IP
    bound = commit(rules_store, RESERVED_MAC, RESERVED_IP)
    assert isinstance(bound, LeaseGrant) and bound.name is not None
    assert (bound.name, bound.os) == ("reserved-one", "debian")
    # Selecting any other address is refused: the client must take its own.
    assert error_code(commit(rules_store, RESERVED_MAC, "192.0.2.51")) == "conflict"


def test_reservation_outside_the_range_is_honoured(rules_store: StoreLab) -> None:
    assert offer(rules_store, STATIC_MAC).ip == STATIC_IP
    assert isinstance(commit(rules_store, STATIC_MAC, STATIC_IP), LeaseGrant)
    renewed = commit(rules_store, STATIC_MAC, STATIC_IP, mode="renew")
    assert isinstance(renewed, LeaseGrant) and renewed.state == "bound"


def test_address_reserved_for_another_mac_is_never_given(rules_store: StoreLab) -> None:
    mac = new_mac()
    assert offer(rules_store, mac, requested_ip=RESERVED_IP).ip != RESERVED_IP
    assert error_code(commit(rules_store, mac, RESERVED_IP)) == "conflict"
    assert error_code(commit(rules_store, mac, STATIC_IP, mode="reboot")) in ("conflict",
                                                                               "not_found")


def test_requested_address_is_honoured_when_free_and_in_range(rules_store: StoreLab) -> None:
    mac = new_mac()
    wanted = "192.0.2.77"
    assert offer(rules_store, mac, requested_ip=wanted).ip == wanted
    assert isinstance(commit(rules_store, mac, wanted), LeaseGrant)
    # Held by that client now: someone else asking for it gets another address.
    other = new_mac()
    assert offer(rules_store, other, requested_ip=wanted).ip != wanted
    # Out of the range (but in the subnet): not honoured.
    assert offer(rules_store, new_mac(), requested_ip="192.0.2.150").ip != "192.0.2.150"
    # Not an address at all: a bad request, not a crash.
    assert error_code(rules_store.call(LeaseOffer(mac=new_mac(), subnet=NETWORK,
                                                  requested_ip="192.0.2.999"))) == "bad_request"


def test_network_broadcast_server_and_gateway_are_never_given(rules_store: StoreLab) -> None:
    server, gateway = "192.0.2.1", "192.0.2.2"  # both inside the configured range
    for ip in (server, gateway):
        mac = new_mac()
        assert offer(rules_store, mac, requested_ip=ip).ip not in (server, gateway)
        assert error_code(commit(rules_store, mac, ip)) == "conflict"
    for ip in ("192.0.2.0", "192.0.2.255"):
        assert error_code(commit(rules_store, new_mac(), ip)) == "conflict"
    handed = {offer(rules_store, new_mac()).ip for _ in range(12)}
    assert not handed & {server, gateway, RESERVED_IP, "192.0.2.0", "192.0.2.255"}


def test_two_clients_never_share_an_address(rules_store: StoreLab) -> None:
    a, b = new_mac(), new_mac()
    ip = bind(rules_store, a)
    assert error_code(commit(rules_store, b, ip)) == "conflict"
    assert error_code(commit(rules_store, b, ip, mode="reboot")) in ("conflict", "not_found")
    assert offer(rules_store, b, requested_ip=ip).ip != ip


def test_offer_holds_the_address_for_a_while(rules_store: StoreLab) -> None:
    a, b = new_mac(), new_mac()
    held = offer(rules_store, a, requested_ip="192.0.2.88").ip
    assert held == "192.0.2.88"
    assert offer(rules_store, b, requested_ip=held).ip != held
    assert error_code(commit(rules_store, b, held)) == "conflict"
    time.sleep(2.5)  # offer_hold is 2 s
    assert offer(rules_store, b, requested_ip=held).ip == held


def test_declined_address_is_quarantined(rules_store: StoreLab) -> None:
    mac = new_mac()
    ip = bind(rules_store, mac)
    assert isinstance(rules_store.call(LeaseDecline(mac=mac, ip=ip)), Done)
    looked = rules_store.call(LeaseLookup(ip=ip))
    assert isinstance(looked, LeaseReply) and looked.lease.state == "declined"
    assert looked.lease.expires >= time.time() + 3000  # decline_quarantine = 3600
    # Nobody gets it during the quarantine, the decliner included.
    assert offer(rules_store, mac).ip != ip
    other = new_mac()
    assert offer(rules_store, other, requested_ip=ip).ip != ip
    assert error_code(commit(rules_store, other, ip)) == "conflict"


def test_a_decline_for_someone_elses_address_is_refused(rules_store: StoreLab) -> None:
    owner, stranger = new_mac(), new_mac()
    ip = bind(rules_store, owner)
    assert error_code(rules_store.call(LeaseDecline(mac=stranger, ip=ip))) == "conflict"
    looked = rules_store.call(LeaseLookup(ip=ip))
    assert isinstance(looked, LeaseReply) and looked.lease.state == "bound"
    assert looked.lease.mac == owner


def test_only_the_client_an_address_was_offered_to_may_decline_it(rules_store: StoreLab) -> None:
    """RFC 2131 4.3.3: a DECLINE of a free address, or of one offered to
    another client, quarantines nothing (or 127 made-up MACs would empty a
    /25 for an hour)."""
    free = "192.0.2.97"
    assert lookup_state(rules_store, free) is None
    for _ in range(20):
        assert error_code(rules_store.call(LeaseDecline(mac=new_mac(), ip=free))) == "conflict"
    assert lookup_state(rules_store, free) is None
    offered_to, stranger = new_mac(), new_mac()
    ip = offer(rules_store, offered_to).ip
    assert error_code(rules_store.call(LeaseDecline(mac=stranger, ip=ip))) == "conflict"
    assert lookup_state(rules_store, ip) == "offered"
    # The client it was offered to may decline it before taking it.
    assert isinstance(rules_store.call(LeaseDecline(mac=offered_to, ip=ip)), Done)
    assert lookup_state(rules_store, ip) == "declined"


def lookup_state(store: StoreLab, ip: str) -> str | None:
    looked = store.call(LeaseLookup(ip=ip))
    return looked.lease.state if isinstance(looked, LeaseReply) else None


def test_exhausted_pool_is_a_typed_error_and_renewals_still_work(rules_store: StoreLab) -> None:
    macs = [new_mac() for _ in range(3)]
    ips = [bind(rules_store, m, subnet=SMALL) for m in macs]
    assert sorted(ips) == ["198.51.100.10", "198.51.100.11", "198.51.100.12"]
    late = rules_store.call(LeaseOffer(mac=new_mac(), subnet=SMALL))
    assert error_code(late) == "pool_exhausted"
    for mode in ("renew", "rebind"):
        renewed = commit(rules_store, macs[0], ips[0], mode=mode, subnet=SMALL)
        assert isinstance(renewed, LeaseGrant) and renewed.state == "bound"
    # A bound client asking again still gets its own address.
    assert offer(rules_store, macs[1], SMALL).ip == ips[1]
    # A release makes room.
    rules_store.call(LeaseRelease(mac=macs[2], ip=ips[2]))
    assert offer(rules_store, new_mac(), SMALL).ip == ips[2]


def test_init_reboot(rules_store: StoreLab) -> None:
    stranger = new_mac()
    assert error_code(commit(rules_store, stranger, "192.0.2.60", mode="reboot")) == "not_found"
    mac = new_mac()
    ip = bind(rules_store, mac)
    again = commit(rules_store, mac, ip, mode="reboot")
    assert isinstance(again, LeaseGrant) and again.ip == ip
    taken = bind(rules_store, new_mac())
    assert error_code(commit(rules_store, mac, taken, mode="reboot")) == "conflict"
    # An address on another network: wrong network, NAK.
    assert error_code(commit(rules_store, mac, "10.1.1.1", mode="reboot")) == "conflict"


def test_renew_and_rebind_need_a_binding(rules_store: StoreLab) -> None:
    mac = new_mac()
    ip = offer(rules_store, mac).ip
    assert error_code(commit(rules_store, mac, ip, mode="renew")) == "conflict"  # only offered
    assert isinstance(commit(rules_store, mac, ip), LeaseGrant)
    other = new_mac()
    assert error_code(commit(rules_store, other, ip, mode="renew")) == "conflict"
    assert error_code(commit(rules_store, other, ip, mode="rebind")) == "conflict"
    first = commit(rules_store, mac, ip, mode="renew")
    time.sleep(0.05)
    second = commit(rules_store, mac, ip, mode="rebind")
    assert isinstance(first, LeaseGrant) and isinstance(second, LeaseGrant)
    assert second.expires > first.expires


def test_release_frees_the_address(rules_store: StoreLab) -> None:
    mac = new_mac()
    ip = bind(rules_store, mac)
    assert isinstance(rules_store.call(LeaseRelease(mac=mac, ip=ip)), Done)
    looked = rules_store.call(LeaseLookup(ip=ip))
    assert isinstance(looked, LeaseReply) and looked.lease.state == "released"
    assert error_code(commit(rules_store, mac, ip, mode="renew")) == "conflict"
    other = new_mac()
    assert offer(rules_store, other, requested_ip=ip).ip == ip
    assert isinstance(commit(rules_store, other, ip), LeaseGrant)


def test_moving_to_another_address_releases_the_old_one(rules_store: StoreLab) -> None:
    mac = new_mac()
    old = bind(rules_store, mac)
    new = offer(rules_store, new_mac()).ip  # a free address, held briefly by someone
    time.sleep(2.5)
    moved = commit(rules_store, mac, new)
    assert isinstance(moved, LeaseGrant) and moved.ip == new
    looked = rules_store.call(LeaseLookup(ip=old))
    assert isinstance(looked, LeaseReply) and looked.lease.state == "released"
    mine = rules_store.call(LeaseLookup(mac=mac))
    assert isinstance(mine, LeaseReply) and mine.lease.ip == new


def test_lookup_by_mac_and_by_address(rules_store: StoreLab) -> None:
    mac = new_mac()
    ip = bind(rules_store, mac)
    by_ip = rules_store.call(LeaseLookup(ip=ip))
    by_mac = rules_store.call(LeaseLookup(mac=mac.upper().replace(":", "-")))
    assert isinstance(by_ip, LeaseReply) and isinstance(by_mac, LeaseReply)
    assert by_ip.lease == by_mac.lease and by_ip.lease.mac == mac
    assert by_ip.machine is not None and by_ip.machine.ip == ip
    assert error_code(rules_store.call(LeaseLookup(ip="192.0.2.97"))) == "not_found"
    assert error_code(rules_store.call(LeaseLookup(mac=new_mac()))) == "not_found"
    assert error_code(rules_store.call(LeaseLookup(mac="not a mac"))) == "bad_request"


def test_lease_list_filters(rules_store: StoreLab) -> None:
    mac = new_mac()
    ip = bind(rules_store, mac)
    every = rules_store.call(LeaseList())
    bound = rules_store.call(LeaseList(subnet=NETWORK, state="bound"))
    assert isinstance(every, LeaseListReply) and isinstance(bound, LeaseListReply)
    assert any(x.ip == ip and x.mac == mac for x in bound.leases)
    assert all(x.state == "bound" and x.subnet == NETWORK for x in bound.leases)
    addresses = [x.ip for x in every.leases]
    assert len(addresses) == len(set(addresses))  # one lease per address
    assert error_code(rules_store.call(LeaseList(subnet="10.0.0.0/8"))) == "not_found"
    assert len(rules_store.call(LeaseList(limit=1)).leases) == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("mac", ["", "zz:zz:zz:zz:zz:zz", "52:54:00:00:00"])
def test_malformed_mac_is_a_bad_request(rules_store: StoreLab, mac: str) -> None:
    assert error_code(rules_store.call(LeaseOffer(mac=mac, subnet=NETWORK))) == "bad_request"
