"""Which name the feed gives a lease's host, and whether the operator chose it."""

from __future__ import annotations

import pytest

from astralboot.common.messages import LeaseRecord, MachineRecord
from astralboot.services.dnsd.feed import chosen_name

MAC = "52:54:00:00:00:01"


def lease(hostname: str | None = None) -> LeaseRecord:
    return LeaseRecord(ip="192.0.2.10", mac=MAC, subnet="192.0.2.0/24", state="bound",
                       expires=0.0, lease_time=3600, hostname=hostname)


CASES = {
    # machine name, the client's host name -> (name, fixed)
    "the store's default name": ("node10", "laptop", ("node10", False)),
    "a default name with its suffix": ("node10-2", None, ("node10-2", False)),
    "the operator's name": ("buildbox", "laptop", ("buildbox", True)),
    "looks like a default, is not one": ("node10a", None, ("node10a", True)),
    "no machine: the client's name": (None, "laptop", ("laptop", False)),
    "no machine, no name": (None, None, (None, False)),
}


@pytest.mark.parametrize("machine_name,hostname,expected", CASES.values(), ids=CASES.keys())
def test_chosen_name(machine_name: str | None, hostname: str | None,
                     expected: tuple[str | None, bool]) -> None:
    machine = MachineRecord(mac=MAC, name=machine_name) if machine_name else None
    assert chosen_name(lease(hostname), machine) == expected
