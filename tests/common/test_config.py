"""Configuration: typed loading, errors that name file and key, TOML round trips."""

from __future__ import annotations

import dataclasses
import os
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from astralboot.common.config import load, render
from astralboot.common.errors import ConfigError, ConfigErrors

BASE = 'interface = "br0"\naddress = "192.0.2.1"\nnetwork = "192.0.2.0/24"\n'


def write(folder: Path, text: str, name: str = "config.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, key, problem", [
    ('interface = "br0"\naddress = "192.0.2.300"\n', "address", "not an IPv4 address"),
    (BASE + 'adress = "x"\n', "adress", "did you mean address?"),
    (BASE + '[tftp]\nport = 70000\n', "tftp.port", "out of range"),
    (BASE + '[http]\nport = "eighty"\n', "http.port", "whole number"),
    (BASE + '[dhcp]\nrange = "192.0.2.200-192.0.2.100"\n', "dhcp.range", "ends"),
    (BASE + '[dhcp]\nrange = "198.51.100.1-198.51.100.9"\n', "dhcp.range", "not inside 192.0.2.0/24"),
    (BASE + '[dhcp]\nrange = "192.0.2.0-192.0.2.9"\n', "dhcp.range", "network or broadcast"),
    (BASE + '[dhcp]\nlease_time = "forever"\n', "dhcp.lease_time", "duration"),
    (BASE + '[dhcp]\nlease_time = "10s"\n', "dhcp.lease_time", "out of range"),
    (BASE + '[ipfs]\napi = "localhost:5001"\n', "ipfs.api", "multiaddr"),
    (BASE + '[store]\ndatabase = "mysql://x"\n', "store.database", "sqlite"),
    (BASE + '[store]\ndatabase = "sqlite:///:memory:"\n', "store.database", "lose every lease"),
    (BASE + '[store]\ncache_max = "lots"\n', "store.cache_max", "size like"),
    (BASE + '[store]\ncache_max = -1\n', "store.cache_max", "negative"),
    (BASE + '[bus]\nendpoint = "udp://1.2.3.4:5"\n', "bus.endpoint", "tcp://HOST:PORT"),
    (BASE + 'log_level = "chatty"\n', "log_level", "not one of"),
    (BASE + '[dhcp]\ndns = ["dns.example"]\n', "dhcp.dns", "not an IPv4 address"),
    (BASE + '[dns]\nupstream = ["resolver.example"]\n', "dns.upstream", "a name would need"),
    (BASE + '[dns]\nupstream = "192.0.2.53:99999"\n', "dns.upstream", "is not a port"),
    (BASE + '[dns]\nbind = "0.0.0.0"\n', "dns.bind", "one address of this host"),
    (BASE + '[dns]\nrrl = -1\n', "dns.rrl", "from 0 to"),
    (BASE + '[dns]\nserver_name = "a.b"\n', "dns.server_name", "one DNS label"),
    (BASE + '[dns]\nenabeld = false\n', "dns.enabeld", "did you mean dns.enabled?"),
    (BASE + 'dhcp = 5\n', "dhcp", "must be a table"),
    (BASE + '[[dhcp.reservation]]\nmac = "52:54:00:00:00:01"\naddress = "203.0.113.5"\n',
     "dhcp.reservation[0].address", "in no configured subnet"),
    (BASE + '[[dhcp.reservation]]\nmac = "nonsense"\naddress = "192.0.2.5"\n',
     "dhcp.reservation[0].mac", "not a MAC address"),
    (BASE + '[[dhcp.subnet]]\nnetwork = "192.0.2.128/25"\n', "dhcp.subnet[0].network", "overlaps"),
    (BASE + '[[dhcp.subnet]]\ngateway = "198.18.0.1"\n', "dhcp.subnet[0].network", "missing"),
    (BASE + '[menu]\ndefault = "../etc"\n', "menu.default", "not an OS folder name"),
    (BASE + '[admin]\nport = 8443\ntls_cert = "c.pem"\n', "admin.tls_key", "go together"),
    (BASE + '[admin]\nport = 8443\nclient_ca = "ca.pem"\n', "admin.client_ca", "need TLS"),
    (BASE + '[admin]\nboot_face = false\n', "admin.boot_face", "needs [admin] port"),
    (BASE + '[install]\npassword_hash = "hunter2"\n', "install.password_hash", "crypt(3)"),
    (BASE + '[service]\nuser = "Root Admin"\n', "service.user", "not a user name"),
    (BASE + '[dhcp]\noffer_share = 0\n', "dhcp.offer_share", "from 0.05 to 1"),
    (BASE + '[[dhcp.reservation]]\nmac = "52:54:00:00:00:01"\naddress = "192.0.2.5"\n'
     'name = "web.example.com"\n', "dhcp.reservation[0].name", "one DNS label"),
    (BASE + 'domain = "bad domain!"\n', "domain", "not a valid DNS name"),
    ('interface = "no-such-if0"\n', "address", "no interface 'no-such-if0'"),
    (BASE + "[dhcp\n", "(syntax)", ""),
])
def test_every_error_names_file_and_key(short_tmp: Path, text: str, key: str,
                                        problem: str) -> None:
    path = write(short_tmp, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    errors = info.value.errors if isinstance(info.value, ConfigErrors) else [info.value]
    matching = [e for e in errors if e.key == key]
    assert matching, f"no error for {key}: {info.value}"
    assert matching[0].file == str(path)
    assert problem in matching[0].problem
    assert str(path) in str(info.value) and key in str(info.value)


def test_all_errors_are_reported_at_once(short_tmp: Path) -> None:
    path = write(short_tmp, BASE + 'bogus = 1\n[tftp]\nport = 0\n[http]\nworkers = 0\n')
    with pytest.raises(ConfigErrors) as info:
        load(path)
    assert {e.key for e in info.value.errors} == {"bogus", "tftp.port", "http.workers"}


def test_missing_file_says_how_to_create_one(short_tmp: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(short_tmp / "nope.toml")
    assert "astralboot init" in str(info.value)


def test_refs_with_a_bad_cid_names_refs_toml(short_tmp: Path) -> None:
    path = write(short_tmp, BASE)
    write(short_tmp, 'boot = "not-a-cid"\n', "refs.toml")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.file == str(short_tmp / "refs.toml") and info.value.key == "boot"


def test_refs_root_cid_is_read(short_tmp: Path) -> None:
    cid = "QmfTwcMhWqiRNobAQzfwzWYuLdvNz2wTBSkjeSGkBxEkVf"
    write(short_tmp, f'boot = "{cid}"\n', "refs.toml")
    assert load(write(short_tmp, BASE)).ipfs.root == cid


def test_defaults_and_derived_values(short_tmp: Path) -> None:
    config = load(write(short_tmp, BASE))
    assert config.gateway == IPv4Address("192.0.2.1")
    assert config.dns == (IPv4Address("192.0.2.1"),)  # the server itself, as in the original
    assert config.dhcp.local.range_start == IPv4Address("192.0.2.128")
    assert config.http.public_url == "http://192.0.2.1"
    assert config.bus.endpoint == f"ipc://{short_tmp}/run/bus.sock"
    assert config.bus.events == f"ipc://{short_tmp}/run/events.sock"
    assert config.store.database == f"sqlite:///{short_tmp}/data/astralboot.db"
    assert config.dhcp.rogue_listen == 5.0  # longer than a pinging server takes to answer
    assert config.store.cache_max == 0  # the cache is not bounded unless asked
    assert "gateway" in config.derived and "address" not in config.derived


@pytest.mark.parametrize("value, size", [
    ("0", 0), ("1048576", 1 << 20), ("512M", 512 << 20), ("20G", 20 << 30), ("1.5T", 3 << 39),
    ("64 KiB", 64 << 10), ("2gb", 2 << 30)])
def test_cache_bound_takes_sizes_with_units(short_tmp: Path, value: str, size: int) -> None:
    quoted = value if value.isdigit() else f'"{value}"'
    assert load(write(short_tmp, BASE + f"[store]\ncache_max = {quoted}\n")).store.cache_max == size


def test_address_and_network_are_read_from_the_interface(short_tmp: Path) -> None:
    config = load(write(short_tmp, 'interface = "lo"\n'))
    assert config.address == IPv4Address("127.0.0.1")
    assert config.network == IPv4Network("127.0.0.0/8")


def test_relative_paths_resolve_against_the_config_folder(short_tmp: Path,
                                                          tmp_path: Path) -> None:
    (short_tmp / "etc").mkdir()
    path = write(short_tmp / "etc", BASE + 'data = "../boot-data"\n[store]\ncache = "c"\n'
                 'database = "sqlite:///db/leases.db"\n[bus]\nendpoint = "ipc://r/bus.sock"\n')
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        config = load(path)
    finally:
        os.chdir(cwd)
    assert config.data == short_tmp / "etc" / ".." / "boot-data"
    assert config.store.cache == short_tmp / "etc" / "c"
    assert config.store.database == f"sqlite:///{short_tmp}/etc/db/leases.db"
    assert config.bus.endpoint == f"ipc://{short_tmp}/etc/r/bus.sock"


def test_tcp_bus_puts_events_on_the_next_port(short_tmp: Path) -> None:
    config = load(write(short_tmp, BASE + '[bus]\nendpoint = "tcp://192.0.2.1:5555"\n'))
    assert config.bus.events == "tcp://192.0.2.1:5556"
    assert not config.bus.is_local


def test_postgres_urls_use_psycopg(short_tmp: Path) -> None:
    config = load(write(short_tmp, BASE + '[store]\ndatabase = "postgresql://u@h/db"\n'))
    assert config.store.database == "postgresql+psycopg://u@h/db"


def test_the_original_servers_config_keys_still_work(short_tmp: Path) -> None:
    path = write(short_tmp, 'interface = "br0"\nBaseIP = "192.0.2.1"\nDNSServer = "192.0.2.53"\n'
                 'Domain = "erf"\nIPFS = false\nref = "Qm..."\n')
    config = load(path)
    assert config.domain == "erf"
    assert any("DNSServer: old name, read as dhcp.dns" in w for w in config.warnings)
    # The original answered DNS itself, and so does this version by default:
    # clients are sent to dnsd, and the operator is told what became of DNSServer.
    assert config.dns == (IPv4Address("192.0.2.1"),) and config.dnsd.enabled
    assert any("dhcp.dns: not handed to clients" in w and "192.0.2.53" in w
               for w in config.warnings)
    assert any("ref" in w and "ignored" in w for w in config.warnings)


def test_a_config_the_original_wrote_loads_with_its_defaults(short_tmp: Path) -> None:
    # The original's setup saved its whole Config: empty strings for unset
    # keys, the tables it computed, and keys this version has no use for.
    path = write(short_tmp, 'interface = "br0"\nBaseIP = "192.0.2.1"\nDomain = ""\n'
                 'Data = ""\nSpawn = false\nDBname = "./machines.json"\n'
                 'UpstreamDNS = "198.18.0.53"\nSubnet = "255.255.255.0"\nIPFS = false\n'
                 '[Refs]\nboot = "Qm..."\n[OSList.debian]\nName = "debian"\n')
    config = load(path)
    assert config.domain == "astral.lan"  # the default, not an error
    assert config.data == short_tmp / "data"  # ./data next to the config, not the folder
    assert any("Domain: empty, the default is used" in w for w in config.warnings)
    for key, why in (("Refs", "refs.toml"), ("OSList", "data folder"), ("Spawn", "retired")):
        assert any(w.split(": ")[1] == key and why in w for w in config.warnings), key
    assert config.dnsd.upstream == ("198.18.0.53",)  # what the original forwarded to
    assert config.dnsd.upstream_from == "config"


def test_durations_accept_units(short_tmp: Path) -> None:
    config = load(write(short_tmp, BASE + '[dhcp]\nlease_time = "12h"\noffer_hold = "45s"\n'))
    assert config.dhcp.lease_time == 43200 and config.dhcp.offer_hold == 45


def test_relayed_subnets_and_reservations(short_tmp: Path) -> None:
    config = load(write(short_tmp, BASE +
                        '[[dhcp.subnet]]\nnetwork = "198.18.0.0/16"\ngateway = "198.18.0.1"\n'
                        'range = "198.18.1.0-198.18.200.255"\n'
                        '[[dhcp.reservation]]\nmac = "52-54-00-AB-CD-EF"\naddress = "192.0.2.7"\n'
                        'name = "db1"\nos = "debian"\n'))
    assert [s.relayed for s in config.dhcp.subnets] == [False, True]
    assert config.dhcp.subnets[1].name == "198.18.0.0/16"
    res = config.dhcp.reservations[0]
    assert (res.mac, str(res.address), res.name, res.os) == ("52:54:00:ab:cd:ef", "192.0.2.7",
                                                             "db1", "debian")


def test_rendered_config_loads_back_to_the_same_settings(short_tmp: Path) -> None:
    original = load(write(short_tmp, BASE +
                          '[dns]\nenabled = false\ndomain = "boot.example"\n'
                          'upstream = ["198.18.0.53", "[2001:db8::53]:5353"]\n'
                          '[dhcp]\nproxy = true\ndns = ["192.0.2.53", "192.0.2.54"]\n'
                          '[[dhcp.subnet]]\nnetwork = "198.18.0.0/16"\n'
                          '[[dhcp.reservation]]\nmac = "52:54:00:00:00:09"\naddress = "192.0.2.9"\n'
                          '[http]\nport = 8080\n[menu]\ndefault = "ubuntu"\ntimeout = 0\n'))
    shown = write(short_tmp, render(original), "shown.toml")
    again = load(shown)
    assert dataclasses.replace(again, path=original.path, derived=original.derived) == original


@pytest.mark.parametrize("value, size", [
    (None, 256 << 20), ("2097152", 2 << 20), ("64M", 64 << 20), ("1.5G", 3 << 29),
    ("512 MiB", 512 << 20)])
def test_tftp_memory_max_takes_sizes_with_units(short_tmp: Path, value: str | None,
                                                size: int) -> None:
    text = BASE if value is None else BASE + "[tftp]\nmemory_max = " + (
        value if value.isdigit() else f'"{value}"') + "\n"
    config = load(write(short_tmp, text))
    assert config.tftp.memory_max == size
    assert ("tftp.memory_max" in config.derived) == (value is None)
    again = load(write(short_tmp, render(config), "shown.toml"))
    assert again.tftp.memory_max == size


@pytest.mark.parametrize("value, problem", [
    ('"lots"', "size like"), ("-1", "negative"), ("0", "too small"), ('"512K"', "too small"),
    ("true", "not a boolean")])
def test_tftp_memory_max_errors_name_file_and_key(short_tmp: Path, value: str,
                                                  problem: str) -> None:
    path = write(short_tmp, BASE + f"[tftp]\nmemory_max = {value}\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    errors = info.value.errors if isinstance(info.value, ConfigErrors) else [info.value]
    assert [(e.file, e.key) for e in errors] == [(str(path), "tftp.memory_max")]
    assert problem in errors[0].problem
    assert str(path) in str(info.value) and "tftp.memory_max" in str(info.value)


def test_http_slow_client_limits_default_and_parse(short_tmp: Path) -> None:
    config = load(write(short_tmp, BASE))
    assert (config.http.header_timeout, config.http.body_timeout, config.http.per_client) == \
        (10.0, 30.0, 64)
    assert {"http.header_timeout", "http.body_timeout", "http.per_client"} <= config.derived
    config = load(write(short_tmp, BASE + '[http]\nheader_timeout = "15s"\nbody_timeout = "2m"\n'
                        'per_client = 8\n'))
    assert (config.http.header_timeout, config.http.body_timeout, config.http.per_client) == \
        (15.0, 120.0, 8)
    again = load(write(short_tmp, render(config), "shown.toml"))
    assert again.http == config.http


@pytest.mark.parametrize("text, key, problem", [
    ('[http]\nheader_timeout = 0\n', "http.header_timeout", "out of range"),
    ('[http]\nheader_timeout = "soon"\n', "http.header_timeout", "duration"),
    ('[http]\nbody_timeout = "2h"\n', "http.body_timeout", "out of range"),
    ('[http]\nper_client = 0\n', "http.per_client", "out of range"),
    ('[http]\nper_clients = 9\n', "http.per_clients", "did you mean http.per_client?"),
])
def test_http_slow_client_limits_name_key_and_problem(short_tmp: Path, text: str, key: str,
                                                     problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(short_tmp, BASE + text))
    errors = info.value.errors if isinstance(info.value, ConfigErrors) else [info.value]
    assert any(e.key == key and problem in e.problem for e in errors), errors


# --- [dns]: dnsd, and what clients are told to resolve with (option 6) --------

def test_dnsd_is_on_by_default_and_clients_are_told_to_use_it(short_tmp: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    resolv = write(short_tmp, "# written by a DHCP client\nsearch example.net\n"
                   "nameserver 192.0.2.1\nnameserver 198.18.0.53\nnameserver fe80::1%eth0\n"
                   "nameserver 2001:db8::53\nnameserver not-an-address\n", "resolv.conf")
    monkeypatch.setattr(sys.modules["astralboot.common.config.load"], "RESOLV_CONF", resolv)
    config = load(write(short_tmp, BASE + 'domain = "site.example"\n'))
    d = config.dnsd
    assert d.enabled and "dnsd" in config.services
    assert (d.domain, d.bind, d.port) == ("site.example", IPv4Address("192.0.2.1"), 53)
    # The host's resolvers, as dnsmasq reads them, but never dnsd itself (a loop).
    assert d.upstream == ("198.18.0.53", "fe80::1", "2001:db8::53")
    assert d.upstream_from == str(resolv)
    assert config.dns == (IPv4Address("192.0.2.1"),)
    assert all(s.dns == config.dns for s in config.dhcp.subnets)
    shown = render(config)
    assert "# option 6 (DNS servers): dnsd on this server (192.0.2.1)" in shown
    assert f"(from {resolv})" in shown


def test_an_empty_resolv_conf_leaves_dnsd_without_forwarding_and_says_so(
        short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules["astralboot.common.config.load"], "RESOLV_CONF",
                        short_tmp / "none")
    config = load(write(short_tmp, BASE))
    assert config.dnsd.upstream == () and config.dnsd.upstream_from == ""
    assert any("dns.upstream: not set" in w and "only the boot network's own names" in w
               for w in config.warnings)
    # Set to none on purpose: no warning.
    config = load(write(short_tmp, BASE + "[dns]\nupstream = []\n"))
    assert config.dnsd.upstream == () and not config.warnings


def test_with_dnsd_off_clients_get_dhcp_dns_or_nothing(short_tmp: Path) -> None:
    off = load(write(short_tmp, BASE + "[dns]\nenabled = false\n"))
    assert off.dns == () and "dnsd" not in off.services
    assert "# option 6 (DNS servers): none sent" in render(off)
    given = load(write(short_tmp, BASE + '[dns]\nenabled = false\n[dhcp]\ndns = "198.18.0.53"\n'
                       '[[dhcp.subnet]]\nnetwork = "198.18.0.0/16"\n'
                       '[[dhcp.subnet]]\nnetwork = "198.19.0.0/16"\ndns = []\n'))
    assert [s.dns for s in given.dhcp.subnets] == [(IPv4Address("198.18.0.53"),)] * 2 + [()]
    assert "# option 6 (DNS servers): [dhcp] dns, because [dns] enabled = false" in render(given)
    assert not given.warnings


def test_resolvers_set_while_dnsd_is_on_are_not_used_and_the_operator_is_told(
        short_tmp: Path) -> None:
    config = load(write(short_tmp, BASE + '[dns]\nupstream = []\n[dhcp]\ndns = ["198.18.0.53"]\n'
                        '[[dhcp.subnet]]\nnetwork = "198.18.0.0/16"\ndns = "198.18.0.54"\n'))
    assert [s.dns for s in config.dhcp.subnets] == [(IPv4Address("192.0.2.1"),)] * 2
    assert [w.split(": ")[1] for w in config.warnings] == ["dhcp.dns", "dhcp.subnet[0].dns"]
    assert all("set [dns] enabled = false to hand them" in w for w in config.warnings)


def test_a_top_level_dns_list_from_before_dnsd_still_loads(short_tmp: Path) -> None:
    """Configs written before dnsd had the clients' resolvers at the top
    (``dns = [...]``), where the [dns] table is now: read as [dhcp] dns."""
    config = load(write(short_tmp, BASE + 'dns = ["198.18.0.53"]\n[dhcp]\nlease_time = 600\n'))
    assert any("dns: a list of resolvers at the top is read as [dhcp] dns" in w
               for w in config.warnings)
    assert config.dhcp.lease_time == 600
    assert config.dns == (IPv4Address("192.0.2.1"),)  # dnsd is on: it wins, with a warning
    assert any("dhcp.dns: not handed to clients" in w for w in config.warnings)


def test_uefi_loaders_default_per_arch_and_per_class(short_tmp: Path) -> None:
    config = load(write(short_tmp, BASE))
    assert (config.uefi.loader, config.uefi.arm64_loader, config.uefi.class_loaders) == \
        ("ipxe", "auto", ())
    config = load(write(short_tmp, BASE + '[uefi]\nloader = "shim"\n[uefi.class]\n'
                        'etcd = "ipxe"\nsecure-racks = "shim"\n'))
    assert config.uefi.loader == "shim"
    assert dict(config.uefi.class_loaders) == {"etcd": "ipxe", "secure-racks": "shim"}
    again = load(write(short_tmp, render(config), "shown.toml"))
    assert again.uefi == config.uefi
    with pytest.raises(ConfigError) as bad:
        load(write(short_tmp, BASE + '[uefi.class]\netcd = "grub"\n'))
    assert "uefi.class.etcd" in str(bad.value) and "not one of ipxe, shim" in str(bad.value)
