"""The store's decision layer alone (sans-IO): what each request asks to write."""

from __future__ import annotations

from pathlib import Path

import pytest

from astralboot.common.bus.events import boot_event
from astralboot.common.config import load
from astralboot.common.messages import (ContentStat, ErrorReply, LeaseCommit, LeaseOffer,
                                        LeaseGrant)
from astralboot.services.store import service as service_module
from astralboot.services.store.journal import EventPruning, EventWrite, LeaseWrite, MachineWrite
from astralboot.services.store.service import StoreService

from store_lab import NETWORK, write_store_config


@pytest.fixture
def svc(short_tmp: Path) -> StoreService:
    return StoreService(load(write_store_config(short_tmp, "sqlite:///unused.db")))


def test_a_commit_writes_its_lease_and_machine_and_an_offer_writes_nothing(
        svc: StoreService) -> None:
    offered = svc.handle(LeaseOffer(mac="02:00:00:00:00:01", subnet=NETWORK), 100.0)
    assert isinstance(offered.reply, LeaseGrant) and not offered.writes
    assert not offered.background and offered.publish is None
    bound = svc.handle(LeaseCommit(mac="02:00:00:00:00:01", subnet=NETWORK,
                                   ip=offered.reply.ip, mode="select"), 101.0)
    assert [type(w) for w in bound.writes] == [LeaseWrite, MachineWrite]
    assert bound.writes[0].insert and bound.writes[1].insert  # type: ignore[union-attr]
    again = svc.handle(LeaseCommit(mac="02:00:00:00:00:01", subnet=NETWORK,
                                   ip=offered.reply.ip, mode="renew"), 102.0)
    assert not any(w.insert for w in again.writes)  # type: ignore[union-attr]


def test_reported_stages_ride_with_their_request(svc: StoreService) -> None:
    offered = svc.handle(LeaseOffer(mac="02:00:00:00:00:02", subnet=NETWORK, report=True), 1.0)
    assert offered.publish is not None and offered.publish.stage == "dhcp.offer"
    assert [type(w) for w in offered.background] == [EventWrite] and not offered.writes
    assert isinstance(offered.reply, LeaseGrant)
    bound = svc.handle(LeaseCommit(mac="02:00:00:00:00:02", subnet=NETWORK,
                                   ip=offered.reply.ip, mode="select", report=True), 2.0)
    assert bound.publish is not None and bound.publish.stage == "dhcp.ack"
    assert isinstance(bound.writes[-1], EventWrite)  # durable with the lease, or not at all
    assert bound.publish.id == offered.publish.id + 1


def test_the_event_log_is_pruned_in_small_steps(svc: StoreService,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "EVENTS_KEPT", 10)
    monkeypatch.setattr(service_module, "EVENTS_PRUNE_STEP", 3)
    prunes = []
    for n in range(1, 30):
        result = svc.handle(boot_event("tftpd", "tftp.sent", "02:00:00:00:00:03"), float(n))
        prunes += [w.upto for w in result.background if isinstance(w, EventPruning)]
    assert prunes == [4, 8, 12, 16]  # every few events, down to the last ten


def test_requests_for_others_are_refused(svc: StoreService) -> None:
    reply = svc.handle(ContentStat(path="tftp/x"), 1.0).reply
    assert isinstance(reply, ErrorReply) and reply.code == "bad_request"


def test_a_machines_loader_is_kept_handed_to_dhcp_and_checked(svc: StoreService) -> None:
    from astralboot.common.messages import MachineReply, MachineSet
    mac = "02:00:00:00:00:04"
    set_ = svc.handle(MachineSet(mac=mac, loader="shim"), 1.0)
    assert isinstance(set_.reply, MachineReply) and set_.reply.machine.loader == "shim"
    assert [w.row["loader"] for w in set_.writes if isinstance(w, MachineWrite)] == ["shim"]
    # dhcpd learns it with the grant, no second question to the store
    grant = svc.handle(LeaseOffer(mac=mac, subnet=NETWORK), 2.0).reply
    assert isinstance(grant, LeaseGrant) and grant.loader == "shim"
    wrong = svc.handle(MachineSet(mac=mac, loader="grub"), 3.0).reply
    assert isinstance(wrong, ErrorReply) and "loader: 'grub' is not one of ipxe, shim" in wrong.detail
    cleared = svc.handle(MachineSet(mac=mac, clear=("loader",)), 4.0).reply
    assert isinstance(cleared, MachineReply) and cleared.machine.loader is None
