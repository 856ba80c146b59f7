"""Machines, reservations, boot events and the machines.json import, on both backends."""

from __future__ import annotations

import secrets
import time
from concurrent.futures import ThreadPoolExecutor

from astralboot.common.bus.client import SyncBusClient
from astralboot.common.bus.events import EventSubscriber, boot_event
from astralboot.common.messages import (BootEvent, Done, ErrorReply, EventList, EventListReply,
                                        EventReport, Health, HealthReply, ImportedLease, ImportReply, LeaseCommit,
                                        LeaseImport, LeaseLookup, LeaseOffer, LeaseRelease,
                                        LeaseGrant, LeaseReply,
                                        MachineGet, MachineList, MachineListReply, MachineReply,
                                        MachineSet, Reservation, ReservationDelete,
                                        ReservationList, ReservationListReply, ReservationSet)

from store_lab import NETWORK, RESERVED_IP, RESERVED_MAC, SMALL, StoreLab


def new_mac() -> str:
    return "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))


def code(reply: object) -> str | None:
    return reply.code if isinstance(reply, ErrorReply) else None


def bind(store: StoreLab, mac: str, subnet: str = NETWORK) -> LeaseGrant:
    offered = store.call(LeaseOffer(mac=mac, subnet=subnet))
    assert isinstance(offered, LeaseGrant), offered
    bound = store.call(LeaseCommit(mac=mac, subnet=subnet, ip=offered.ip, mode="select"))
    assert isinstance(bound, LeaseGrant), bound
    return bound


# -- machines -------------------------------------------------------------------


def test_machine_set_get_and_clear(rules_store: StoreLab) -> None:
    mac = new_mac()
    bound = bind(rules_store, mac)
    assert bound.name is not None
    default_name = bound.name

    reply = rules_store.call(MachineSet(mac=mac, os="debian", machine_class="web",
                                        labels={"rack": "r1"}, boot_once=True))
    assert isinstance(reply, MachineReply)
    m = reply.machine
    assert (m.name, m.os, m.machine_class, m.labels, m.boot_once, m.ip) == (
        default_name, "debian", "web", {"rack": "r1"}, True, bound.ip)

    # None leaves a field alone.
    unchanged = rules_store.call(MachineSet(mac=mac))
    assert isinstance(unchanged, MachineReply) and unchanged.machine.os == "debian"

    renamed = rules_store.call(MachineSet(mac=mac, name=f"box-{mac[-2:]}"))
    assert isinstance(renamed, MachineReply) and renamed.machine.name == f"box-{mac[-2:]}"

    cleared = rules_store.call(MachineSet(mac=mac, clear=("os", "labels", "boot_once", "name")))
    assert isinstance(cleared, MachineReply)
    c = cleared.machine
    assert (c.os, c.labels, c.boot_once, c.machine_class) == (None, {}, False, "web")
    assert c.name == default_name  # a cleared name goes back to nodeN

    got = rules_store.call(MachineGet(mac=mac.upper()))
    assert isinstance(got, MachineReply) and got.machine == c


def test_machine_names_are_unique(rules_store: StoreLab) -> None:
    a, b = new_mac(), new_mac()
    name = f"unique-{secrets.token_hex(3)}"
    assert isinstance(rules_store.call(MachineSet(mac=a, name=name)), MachineReply)
    assert code(rules_store.call(MachineSet(mac=b, name=name))) == "conflict"
    assert code(rules_store.call(MachineGet(mac=b))) == "not_found"  # nothing was created
    assert code(rules_store.call(MachineSet(mac=b, name="not a name!"))) == "bad_request"
    assert code(rules_store.call(MachineSet(mac=b, os="../etc"))) == "bad_request"


def test_machine_set_creates_an_unknown_machine(rules_store: StoreLab) -> None:
    mac = new_mac()
    assert code(rules_store.call(MachineGet(mac=mac))) == "not_found"
    created = rules_store.call(MachineSet(mac=mac, os="ubuntu"))
    assert isinstance(created, MachineReply)
    assert created.machine.name.startswith("node") and created.machine.os == "ubuntu"
    assert created.machine.ip is None  # no lease yet
    # Its first lease keeps the name it already has.
    bound = bind(rules_store, mac)
    assert (bound.name, bound.os) == (created.machine.name, "ubuntu")


def test_machine_list_by_os(rules_store: StoreLab) -> None:
    os_name = f"os{secrets.token_hex(3)}"
    macs = {new_mac() for _ in range(3)}
    for mac in macs:
        rules_store.call(MachineSet(mac=mac, os=os_name))
    listed = rules_store.call(MachineList(os=os_name))
    assert isinstance(listed, MachineListReply)
    assert {m.mac for m in listed.machines} == macs
    everyone = rules_store.call(MachineList())
    assert isinstance(everyone, MachineListReply)
    assert macs <= {m.mac for m in everyone.machines}


# -- reservations ----------------------------------------------------------------


def test_reservations_at_run_time(rules_store: StoreLab) -> None:
    mac = new_mac()
    ip = "192.0.2.66"
    done = rules_store.call(ReservationSet(reservation=Reservation(mac=mac, ip=ip, name=None,
                                                                   os="debian")))
    assert isinstance(done, Done)
    listed = rules_store.call(ReservationList())
    assert isinstance(listed, ReservationListReply)
    assert Reservation(mac=mac, ip=ip, os="debian") in listed.reservations
    assert Reservation(mac=RESERVED_MAC, ip=RESERVED_IP, name="reserved-one",
                       os="debian") in listed.reservations
    # Another client cannot have it; the reserved one gets it.
    assert rules_store.call(LeaseOffer(mac=new_mac(), subnet=NETWORK,
                                       requested_ip=ip)).ip != ip  # type: ignore[union-attr]
    assert bind(rules_store, mac).ip == ip
    # Clashes and mistakes are typed errors.
    assert code(rules_store.call(ReservationSet(reservation=Reservation(
        mac=new_mac(), ip=ip)))) == "conflict"
    assert code(rules_store.call(ReservationSet(reservation=Reservation(
        mac=RESERVED_MAC, ip="192.0.2.67")))) == "conflict"  # fixed in config.toml
    assert code(rules_store.call(ReservationSet(reservation=Reservation(
        mac=new_mac(), ip="10.0.0.1")))) == "bad_request"
    assert code(rules_store.call(ReservationSet(reservation=Reservation(
        mac=new_mac(), ip="192.0.2.1")))) == "bad_request"  # the server itself
    # Deleting it frees the address for others once the lease is gone.
    assert isinstance(rules_store.call(ReservationDelete(mac=mac)), Done)
    assert code(rules_store.call(ReservationDelete(mac=mac))) == "not_found"
    assert code(rules_store.call(ReservationDelete(mac=RESERVED_MAC))) == "conflict"


# -- events ----------------------------------------------------------------------


def test_events_are_stored_listed_and_published(rules_store: StoreLab) -> None:
    mac = new_mac()
    with EventSubscriber(rules_store.config.bus.events, mac=mac) as sub:
        sub.wait_subscribed()
        for stage in ("dhcp.offer", "dhcp.ack", "tftp.sent"):
            rules_store.bus.notify(boot_event("dhcpd", stage, mac, "192.0.2.9", "detail"))
        seen = [sub.receive(timeout=10) for _ in range(3)]
    assert [e.stage for e in seen if e is not None] == ["dhcp.offer", "dhcp.ack", "tftp.sent"]
    ids = [e.id for e in seen if e is not None]
    assert ids == sorted(ids) and ids[0] > 0

    listed = rules_store.call(EventList(mac=mac))
    assert isinstance(listed, EventListReply)
    assert [(e.id, e.stage, e.ip, e.service, e.detail) for e in listed.events] == [
        (e.id, e.stage, "192.0.2.9", "dhcpd", "detail") for e in seen if e is not None]
    after = rules_store.call(EventList(mac=mac, after_id=ids[0], limit=1))
    assert isinstance(after, EventListReply) and [e.id for e in after.events] == [ids[1]]


def test_an_event_by_address_goes_to_the_machine_holding_the_lease(
        rules_store: StoreLab) -> None:
    # TFTP and image downloads know only the client's address; the store
    # names the machine from its own leases (no lookup by the front end).
    mac = new_mac()
    ip = bind(rules_store, mac).ip
    with EventSubscriber(rules_store.config.bus.events, mac=mac) as sub:
        sub.wait_subscribed()
        rules_store.bus.notify(boot_event("tftpd", "tftp.sent", None, ip, "undionly.kpxe"))
        rules_store.bus.notify(boot_event("tftpd", "tftp.sent", None, "192.0.2.251", "x"))
        seen = sub.receive(timeout=10)
    assert seen is not None and (seen.mac, seen.ip, seen.service, seen.detail) == (
        mac, ip, "tftpd", "undionly.kpxe")
    listed = rules_store.call(EventList(mac=mac))
    assert isinstance(listed, EventListReply)
    assert [(e.stage, e.ip) for e in listed.events][-1] == ("tftp.sent", ip)
    health = rules_store.call(Health())
    assert isinstance(health, HealthReply)
    assert dict(health.details)["events.no_lease"] == 1  # 192.0.2.251: nobody's


def test_many_front_ends_reporting_by_address_at_once_each_name_the_right_machine(
        rules_store: StoreLab) -> None:
    # 24 machines, 4 reporters at once (tftpd and httpd workers), every event
    # carrying only an address: each must land on the MAC holding that address.
    holders = {bind(rules_store, mac).ip: mac for mac in (new_mac() for _ in range(24))}
    ips = list(holders)

    def report(worker: int) -> None:
        with SyncBusClient(rules_store.config.bus.endpoint) as bus:
            for ip in ips[worker::4]:
                bus.notify(boot_event("tftpd", "tftp.sent", None, ip, f"from {ip}"))
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(report, range(4)))
    for ip, mac in holders.items():
        deadline = time.monotonic() + 10
        while True:
            listed = rules_store.call(EventList(mac=mac))
            assert isinstance(listed, EventListReply)
            sent = [e for e in listed.events if e.stage == "tftp.sent"]
            if sent or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert [(e.mac, e.ip, e.detail) for e in sent] == [(mac, ip, f"from {ip}")]
    for ip, mac in holders.items():  # the pool as it was for the tests after this one
        assert isinstance(rules_store.call(LeaseRelease(mac=mac, ip=ip)), Done)


def test_a_bad_event_is_dropped_without_a_reply(rules_store: StoreLab) -> None:
    rules_store.bus.notify(EventReport(event=BootEvent(time=1.0, mac="bogus", service="x",
                                                       stage="dhcp.ack")))
    good = new_mac()
    rules_store.bus.notify(boot_event("httpd", "http.script", good))
    listed = rules_store.call(EventList(mac=good))
    assert isinstance(listed, EventListReply) and len(listed.events) == 1


def test_machine_changes_are_events(rules_store: StoreLab) -> None:
    mac = new_mac()
    rules_store.call(MachineSet(mac=mac, os="debian"))
    listed = rules_store.call(EventList(mac=mac))
    assert isinstance(listed, EventListReply)
    assert [e.stage for e in listed.events] == ["machine.changed"]
    assert "os=debian" in listed.events[0].detail


# -- import ----------------------------------------------------------------------


def test_import_of_the_original_machines_json(rules_store: StoreLab) -> None:
    a, b, c = new_mac(), new_mac(), new_mac()
    entries = (
        ImportedLease(ip="192.0.2.0", reserved=True),  # the original reserved these
        ImportedLease(ip="192.0.2.1", reserved=True),
        ImportedLease(ip="192.0.2.41", mac=a, active=True, os="debian", name="alpha",
                      machine_class="web", created=1_500_000_000.0),
        ImportedLease(ip="192.0.2.42", mac=b, name="bravo"),
        ImportedLease(ip="192.0.2.160", mac=c, name="charlie"),  # outside the range
        ImportedLease(ip="10.5.5.5", mac=new_mac()),  # in no configured subnet
        ImportedLease(ip="192.0.2.43"),  # an unused row
    )
    first = rules_store.call(LeaseImport(entries=entries))
    assert first == ImportReply(request_id=first.request_id, leases=2, machines=4, reserved=1,
                                skipped=4)
    second = rules_store.call(LeaseImport(entries=entries))
    assert isinstance(second, ImportReply)
    assert (second.leases, second.machines, second.reserved) == (2, 4, 1)  # idempotent

    alpha = rules_store.call(MachineGet(mac=a))
    assert isinstance(alpha, MachineReply)
    assert (alpha.machine.name, alpha.machine.os, alpha.machine.machine_class) == (
        "alpha", "debian", "web")
    assert alpha.machine.first_seen == 1_500_000_000.0 and alpha.machine.ip == "192.0.2.41"
    lease = rules_store.call(LeaseLookup(mac=b))
    assert isinstance(lease, LeaseReply) and lease.lease.ip == "192.0.2.42"
    assert lease.lease.state == "bound"
    # The imported clients keep their addresses.
    assert rules_store.call(LeaseOffer(mac=a, subnet=NETWORK)).ip == "192.0.2.41"  # type: ignore[union-attr]
    assert rules_store.call(LeaseOffer(mac=c, subnet=NETWORK)).ip == "192.0.2.160"  # type: ignore[union-attr]
    listed = rules_store.call(ReservationList())
    assert isinstance(listed, ReservationListReply)
    assert any(r.mac == c and r.ip == "192.0.2.160" for r in listed.reservations)


def test_import_never_takes_an_address_from_a_live_lease(rules_store: StoreLab) -> None:
    holder = new_mac()
    ip = bind(rules_store, holder, SMALL).ip
    reply = rules_store.call(LeaseImport(entries=(ImportedLease(ip=ip, mac=new_mac()),)))
    assert isinstance(reply, ImportReply) and (reply.leases, reply.skipped) == (0, 1)
    looked = rules_store.call(LeaseLookup(ip=ip))
    assert isinstance(looked, LeaseReply) and looked.lease.mac == holder


def test_lease_requests_can_report_their_own_boot_events(rules_store: StoreLab) -> None:
    """report=True: dhcpd sends no EventReport; the store records the stage itself."""
    mac = new_mac()
    with EventSubscriber(rules_store.config.bus.events, mac=mac) as sub:
        sub.wait_subscribed()
        offered = rules_store.call(LeaseOffer(mac=mac, subnet=NETWORK, report=True,
                                              detail="undionly.kpxe"))
        assert isinstance(offered, LeaseGrant)
        bound = rules_store.call(LeaseCommit(mac=mac, subnet=NETWORK, ip=offered.ip,
                                             mode="select", report=True, detail="select iPXE"))
        assert isinstance(bound, LeaseGrant)
        released = rules_store.call(LeaseRelease(mac=mac, ip=bound.ip, report=True))
        assert isinstance(released, Done)
        live = [sub.receive(timeout=10) for _ in range(3)]
    expected = [("dhcpd", "dhcp.offer", offered.ip, "undionly.kpxe"),
                ("dhcpd", "dhcp.ack", bound.ip, "select iPXE"),
                ("dhcpd", "dhcp.release", bound.ip, "")]
    assert [(e.service, e.stage, e.ip, e.detail) for e in live if e is not None] == expected
    listed = rules_store.call(EventList(mac=mac))
    assert isinstance(listed, EventListReply)
    assert [(e.service, e.stage, e.ip, e.detail) for e in listed.events] == expected
    # Without report, nothing is recorded for the caller.
    quiet = new_mac()
    offer = rules_store.call(LeaseOffer(mac=quiet, subnet=NETWORK))
    assert isinstance(offer, LeaseGrant)
    none = rules_store.call(EventList(mac=quiet))
    assert isinstance(none, EventListReply) and none.events == ()


def test_a_refused_commit_reports_nothing(rules_store: StoreLab) -> None:
    mac = new_mac()
    refused = rules_store.call(LeaseCommit(mac=mac, subnet=NETWORK, ip="192.0.2.1",
                                           mode="select", report=True))
    assert code(refused) == "conflict"
    listed = rules_store.call(EventList(mac=mac))
    assert isinstance(listed, EventListReply) and listed.events == ()
