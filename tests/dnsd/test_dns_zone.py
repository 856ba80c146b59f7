"""The zone's data: labels from DHCP names, uniqueness, the serial, the
bound, and what each kind of name resolves to."""

from __future__ import annotations

from ipaddress import IPv4Network

import dns.name
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from astralboot.common.errors import AstralBootError
from astralboot.common.names import MACHINE_NAME
from astralboot.services.dnsd.labels import LABEL_MAX, host_label, unique_label
from astralboot.services.dnsd.zone import Zone, ZoneError, ZoneFull, reverse_prefixes
from dnstest import DOMAIN, SERVER_IP, SUBNETS, lab_zone

N = dns.name.from_text


@pytest.mark.parametrize("text, label", [
    ("web1", "web1"),
    ("WEB1", "web1"),  # lower-cased
    ("Web_01", "web-01"),  # underscore is not a host name character
    ("my host\n", "my-host"),  # runs of other characters: one hyphen
    ("web1.other.org", "web1"),  # the first label; the domain is ours to add
    ("-edge-", "edge"),  # no hyphen at either end
    ("a--b", "a--b"),  # inner hyphens stay
    ("x" * 70, "x" * 63),  # at most 63
    ("x" * 62 + "_y", "x" * 62),  # cut at 63, then the trailing hyphen goes
    ("café", "caf"),
    ("", None), ("___", None), (".lab", None), (None, None), ("ü", None),
    ("0123", "0123"),  # all digits is a valid host label (RFC 1123)
])
def test_host_label(text: str | None, label: str | None) -> None:
    assert host_label(text) == label


@pytest.mark.parametrize("label, taken, result", [
    ("web", set(), "web"),
    ("web", {"web"}, "web-2"),
    ("web", {"web", "web-2"}, "web-3"),
    ("web", {"web", "web-3"}, "web-2"),  # the smallest free suffix
    ("x" * 63, {"x" * 63}, "x" * 61 + "-2"),  # cut to fit 63 with the suffix
    ("x" * 60 + "-ab", {"x" * 60 + "-ab"}, "x" * 60 + "-2"),  # no double hyphen left at the cut
])
def test_unique_label(label: str, taken: set[str], result: str) -> None:
    assert unique_label(label, taken) == result
    assert len(result) <= 63


def test_duplicate_names_get_numbered_suffixes_in_order() -> None:
    zone = Zone(DOMAIN, None, SERVER_IP, SUBNETS)
    assert zone.set_host("52:54:00:00:00:01", "node", "192.0.2.10") == "node"
    assert zone.set_host("52:54:00:00:00:02", "NODE", "192.0.2.11") == "node-2"
    assert zone.set_host("52:54:00:00:00:03", "node.x", "192.0.2.12") == "node-3"
    # The first goes away: its name is free for the next host, and the
    # others keep theirs (a name never moves under a running host).
    assert zone.remove_host("52:54:00:00:00:01")
    assert zone.set_host("52:54:00:00:00:04", "node", "192.0.2.13") == "node"
    assert zone.set_host("52:54:00:00:00:02", "node", "192.0.2.11") == "node-2"
    assert zone.host("52:54:00:00:00:02").label == "node-2"


def test_an_operators_name_takes_its_label_back() -> None:
    zone = Zone(DOMAIN, None, SERVER_IP, SUBNETS)
    assert zone.set_host("52:54:00:00:00:01", "db", "192.0.2.10") == "db"  # over DHCP
    serial = zone.serial
    # a reservation named db: the operator's choice wins, the client moves
    assert zone.set_host("52:54:00:00:00:02", "db", "192.0.2.11", fixed=True) == "db"
    assert zone.host("52:54:00:00:00:01").label == "db-2"
    assert zone.serial == serial + 1
    assert _a(zone, "db") == ["192.0.2.11"] and _a(zone, "db-2") == ["192.0.2.10"]
    assert _ptr(zone, "192.0.2.10") == "db-2.lab.example."
    # a client asking for it now gets a number; so does a second fixed name
    assert zone.set_host("52:54:00:00:00:03", "db", "192.0.2.12") == "db-3"
    assert zone.set_host("52:54:00:00:00:04", "DB", "192.0.2.13", fixed=True) == "db-4"
    # the same host becoming fixed takes the label from a self-named holder
    assert zone.set_host("52:54:00:00:00:03", "db", "192.0.2.12", fixed=True) == "db-3"
    assert zone.remove_host("52:54:00:00:00:02")
    assert zone.set_host("52:54:00:00:00:04", "db", "192.0.2.13", fixed=True) == "db-4"


def test_renewal_keeps_label_and_serial() -> None:
    zone = lab_zone()
    serial = zone.serial
    assert zone.set_host("52:54:00:00:00:02", "Web1", "192.0.2.11") == "web1-2"
    assert zone.serial == serial


def test_new_address_same_name_keeps_label() -> None:
    zone = lab_zone()
    assert zone.set_host("52:54:00:00:00:02", "web1", "192.0.2.99") == "web1-2"
    assert _a(zone, "web1-2") == ["192.0.2.99"]
    assert _ptr(zone, "192.0.2.11") is None


def test_rename_frees_the_old_label() -> None:
    zone = lab_zone()
    assert zone.set_host("52:54:00:00:00:01", "api", "192.0.2.10") == "api"
    assert _a(zone, "web1") is None
    assert zone.set_host("52:54:00:00:00:05", "web1", "192.0.2.12") == "web1"


def test_the_servers_names_are_reserved() -> None:
    zone = lab_zone()
    assert zone.set_host("52:54:00:00:00:09", "astralboot", "192.0.2.30") == "astralboot-2"
    assert zone.set_host("52:54:00:00:00:0a", "BootSrv", "192.0.2.31") == "bootsrv-2"
    assert _a(zone, "astralboot") == [SERVER_IP]
    assert _a(zone, "bootsrv") == [SERVER_IP]


def test_no_usable_name_means_no_record() -> None:
    zone = lab_zone()
    assert zone.set_host("52:54:00:00:00:01", "___", "192.0.2.10") is None
    assert zone.host("52:54:00:00:00:01") is None
    assert _a(zone, "web1") is None
    assert _ptr(zone, "192.0.2.10") is None


def test_serial_increases_on_every_change() -> None:
    zone = Zone(DOMAIN, None, SERVER_IP, SUBNETS, serial=0xFFFFFFFF)
    seen = [zone.serial]
    zone.set_host("52:54:00:00:00:01", "a", "192.0.2.10")
    seen.append(zone.serial)
    zone.set_host("52:54:00:00:00:01", "b", "192.0.2.10")
    seen.append(zone.serial)
    zone.remove_host("52:54:00:00:00:01")
    seen.append(zone.serial)
    assert not zone.remove_host("52:54:00:00:00:01")  # nothing to remove: no change
    seen.append(zone.serial)
    assert seen == [0xFFFFFFFF, 1, 2, 3, 3]  # RFC 1982 wrap, never 0


def test_bound_on_hosts() -> None:
    zone = Zone(DOMAIN, None, SERVER_IP, SUBNETS, max_hosts=2)
    zone.set_host("52:54:00:00:00:01", "a", "192.0.2.10")
    zone.set_host("52:54:00:00:00:02", "b", "192.0.2.11")
    with pytest.raises(ZoneFull) as exc:
        zone.set_host("52:54:00:00:00:03", "c", "192.0.2.12")
    assert isinstance(exc.value, AstralBootError) and exc.value.limit == 2
    assert zone.set_host("52:54:00:00:00:02", "b2", "192.0.2.11") == "b2"  # updates still work
    assert len(zone) == 2


def test_macs_are_case_blind() -> None:
    zone = lab_zone()
    assert zone.set_host("52:54:00:00:00:0A", "z", "192.0.2.40") == "z"
    assert zone.remove_host("52:54:00:00:00:0a")


def test_two_hosts_at_one_address_keep_a_ptr() -> None:
    zone = lab_zone()
    zone.set_host("52:54:00:00:00:07", "later", "192.0.2.10")  # web1's address
    assert _ptr(zone, "192.0.2.10") == "later.lab.example."
    zone.remove_host("52:54:00:00:00:07")
    assert _ptr(zone, "192.0.2.10") == "web1.lab.example."


@pytest.mark.parametrize("network, zones", [
    ("192.0.2.0/24", [(192, 0, 2)]),
    ("10.1.0.0/16", [(10, 1)]),
    ("10.0.0.0/8", [(10,)]),
    ("198.51.100.0/25", [(198, 51, 100)]),  # no classless delegation: the /24 around it
    ("192.0.2.4/30", [(192, 0, 2)]),
    ("10.1.16.0/20", [(10, 1, n) for n in range(16, 32)]),
    ("172.16.0.0/12", [(172, n) for n in range(16, 32)]),
])
def test_reverse_zones_on_octet_boundaries(network: str, zones: list[tuple[int, ...]]) -> None:
    assert reverse_prefixes(IPv4Network(network)) == zones


@pytest.mark.parametrize("domain", ["", "bad_domain", "x" * 64 + ".example", "a..b", "-lab.example"])
def test_bad_domain(domain: str) -> None:
    with pytest.raises(ZoneError):
        Zone(domain, None, SERVER_IP, SUBNETS)


def test_no_subnet() -> None:
    with pytest.raises(ZoneError):
        Zone(DOMAIN, None, SERVER_IP, [])


def test_names_outside_our_zones_are_not_ours() -> None:
    zone = lab_zone()
    for name in ["example.", "www.example.com.", "lab.example.org.", "9.9.9.10.in-addr.arpa.",
                 "in-addr.arpa.", "0.192.in-addr.arpa.", "1.0.0.127.in-addr.arpa."]:
        assert zone.resolve(N(name), dns.rdatatype.A) is None, name


def test_empty_non_terminal_in_a_short_reverse_zone() -> None:
    zone = Zone(DOMAIN, None, "10.1.0.1", ["10.1.0.0/16"])
    zone.set_host("52:54:00:00:00:01", "deep", "10.1.5.7")
    ent = zone.resolve(N("5.1.10.in-addr.arpa."), dns.rdatatype.PTR)
    assert ent is not None and ent.nodata
    gap = zone.resolve(N("6.1.10.in-addr.arpa."), dns.rdatatype.PTR)
    assert gap is not None and gap.rcode == dns.rcode.NXDOMAIN
    assert _ptr(zone, "10.1.5.7") == "deep.lab.example."
    assert _ptr(zone, "10.1.0.1") == "astralboot.lab.example."  # no own name: the service name


def _a(zone: Zone, label: str) -> list[str] | None:
    found = zone.resolve(N(f"{label}.{DOMAIN}."), dns.rdatatype.A)
    assert found is not None
    if found.rcode == dns.rcode.NXDOMAIN:
        return None
    return [rd.to_text() for rd in found.answer[0]]


def _ptr(zone: Zone, ip: str) -> str | None:
    name = ".".join(reversed(ip.split("."))) + ".in-addr.arpa."
    found = zone.resolve(N(name), dns.rdatatype.PTR)
    if found is None or found.rcode == dns.rcode.NXDOMAIN:
        return None
    return found.answer[0][0].to_text()


# -- properties over any sequence of lease events -----------------------------------



_MACS = [f"52:54:00:00:01:{i:02x}" for i in range(6)]
_NAMES = st.one_of(st.sampled_from(["web", "WEB", "web-2", "astralboot", "bootsrv", "a.b",
                                    "", "_", "x" * 63, "x" * 64]), st.text(max_size=12))
_EVENTS = st.lists(st.tuples(st.sampled_from(_MACS), st.none() | _NAMES,
                             st.integers(10, 13), st.booleans()), max_size=30)


@settings(max_examples=300, deadline=None)
@given(_EVENTS)
def test_any_lease_history_keeps_names_unique_and_answers_true(events: list) -> None:
    zone = Zone(DOMAIN, "bootsrv", SERVER_IP, SUBNETS, max_hosts=4)
    for mac, name, last, fixed in events:
        serial = zone.serial
        before = set(zone.hosts())
        if name is None:
            zone.remove_host(mac)
        else:
            try:
                zone.set_host(mac, name, f"192.0.2.{last}", fixed=fixed)
            except ZoneFull:
                assert zone.host(mac) is None and len(zone) == 4
        assert (zone.serial != serial) is (set(zone.hosts()) != before)  # every change, only then
        labels = [h.label for h in zone.hosts()]
        assert len(set(labels)) == len(labels)
        assert not {"astralboot", "bootsrv"} & set(labels)
        for host in zone.hosts():
            assert MACHINE_NAME.fullmatch(host.label) and len(host.label) <= LABEL_MAX
            assert host.label == host.label.lower()
            assert _a(zone, host.label) == [str(host.ip)]
            assert _ptr(zone, str(host.ip)) in {f"{h.label}.{DOMAIN}." for h in zone.hosts()
                                                if h.ip == host.ip}
    for mac in _MACS:
        zone.remove_host(mac)
    assert len(zone) == 0 and _a(zone, "web") is None and _ptr(zone, "192.0.2.10") is None
