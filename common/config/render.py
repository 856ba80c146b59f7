"""Writing a configuration back out as TOML.

``astralboot config show`` prints every effective setting, defaults and
derived values included, marking which ones the file did not set; the
output can be saved and loaded again as is. ``astralboot init`` writes the
settings the operator chose with the same code.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Iterable

from astralboot.common.config.model import Config, SubnetConfig


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (IPv4Address, IPv4Network, Path)):
        v = str(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic strings
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _lines(items: Iterable[tuple[str, Any]], prefix: str, derived: frozenset[str]) -> list[str]:
    out = []
    for key, value in items:
        if value is None:
            continue
        note = "  # default or derived" if f"{prefix}{key}" in derived else ""
        out.append(f"{key} = {toml_value(value)}{note}")
    return out


def _range(s: SubnetConfig) -> str:
    return f"{s.range_start}-{s.range_end}"


def _resolver_note(config: Config) -> str:
    if config.dnsd.enabled:
        return f"dnsd on this server ({config.dnsd.bind}), because [dns] enabled = true"
    if config.dns:
        return "[dhcp] dns, because [dns] enabled = false"
    return "none sent: [dns] enabled = false and [dhcp] dns is empty"


def render(config: Config, *, annotate: bool = True) -> str:
    """The whole effective configuration as TOML."""
    d = config.derived if annotate else frozenset()
    out = [f"# AstralBoot configuration ({config.path})", ""]
    out += _lines([
        ("interface", config.interface),
        ("address", config.address),
        ("network", config.network),
        ("gateway", config.gateway),
        ("domain", config.domain),
        ("data", config.data),
        ("runtime_dir", config.runtime_dir),
        ("log_level", config.log_level),
    ], "", d)

    dh = config.dhcp
    out += ["", "[dhcp]", f"# option 6 (DNS servers): {_resolver_note(config)}"] + _lines([
        ("dns", list(config.dns)),
        ("range", _range(dh.local) if dh.subnets and not dh.local.relayed else None),
        ("lease_time", dh.lease_time),
        ("offer_hold", dh.offer_hold),
        ("decline_quarantine", dh.decline_quarantine),
        ("offer_share", dh.offer_share),
        ("proxy", dh.proxy),
        ("rogue_guard", dh.rogue_guard),
        ("rogue_listen", dh.rogue_listen),
        ("port", dh.port),
        ("client_port", dh.client_port),
    ], "dhcp.", d)
    for s in dh.subnets:
        if not s.relayed:
            continue
        out += ["", "[[dhcp.subnet]]"] + _lines([
            ("network", s.network), ("range", _range(s)), ("gateway", s.gateway),
            ("dns", list(s.dns)), ("lease_time", s.lease_time),
        ], "dhcp.subnet.", d)
    for r in dh.reservations:
        out += ["", "[[dhcp.reservation]]"] + _lines([
            ("mac", r.mac), ("address", r.address), ("name", r.name), ("os", r.os),
        ], "", d)

    n = config.dnsd
    out += ["", "[dns]"] + _lines([
        ("enabled", n.enabled), ("domain", n.domain), ("server_name", n.server_name),
        ("bind", n.bind), ("port", n.port), ("upstream", list(n.upstream)),
    ], "dns.", d)
    if n.upstream_from and n.upstream_from != "config":
        out[-1] += f" (from {n.upstream_from})"
    out += _lines([
        ("clients", list(n.clients)), ("ttl", n.ttl), ("rrl", n.rrl), ("rrl_slip", n.rrl_slip),
        ("cache", n.cache), ("forward_timeout", n.forward_timeout),
        ("forward_attempts", n.forward_attempts), ("log_queries", n.log_queries),
    ], "dns.", d)

    t = config.tftp
    out += ["", "[tftp]"] + _lines([
        ("port", t.port), ("single_port", t.single_port), ("max_sessions", t.max_sessions),
        ("per_client", t.per_client), ("timeout", t.timeout), ("retries", t.retries),
        ("memory_cache", t.memory_cache), ("memory_max", t.memory_max),
    ], "tftp.", d)

    h = config.http
    out += ["", "[http]"] + _lines([
        ("port", h.port), ("bind", h.bind), ("workers", h.workers), ("threads", h.threads),
        ("public_url", h.public_url), ("header_timeout", h.header_timeout),
        ("body_timeout", h.body_timeout), ("per_client", h.per_client),
        ("self_service", h.self_service),
    ], "http.", d)

    m = config.menu
    out += ["", "[menu]"] + _lines([("default", m.default), ("timeout", m.timeout)], "menu.", d)
    out += ["", "[install]"] + _lines([("password_hash", config.install.password_hash)],
                                      "install.", d)
    out += ["", "[service]"] + _lines([("user", config.service.user)], "service.", d)
    out += ["", "[uefi]"] + _lines([("loader", config.uefi.loader),
                                    ("arm64_loader", config.uefi.arm64_loader)], "uefi.", d)
    if config.uefi.class_loaders:
        out += ["", "[uefi.class]"] + [f"{toml_value(name)} = {toml_value(loader)}"
                                       for name, loader in config.uefi.class_loaders]
    a = config.admin
    out += ["", "[admin]"] + _lines([
        ("port", a.port), ("bind", a.bind), ("tls_cert", a.tls_cert), ("tls_key", a.tls_key),
        ("client_ca", a.client_ca), ("boot_face", a.boot_face),
    ], "admin.", d)

    i = config.ipfs
    out += ["", "[ipfs]"] + _lines([
        ("enabled", i.enabled), ("api", i.api), ("timeout", i.timeout),
    ], "ipfs.", d)
    if i.root:
        out.append(f"# root CID from {config.refs_path}: {i.root}")

    s = config.store
    out += ["", "[store]"] + _lines([("database", s.database), ("cache", s.cache),
                                       ("cache_max", s.cache_max)], "store.", d)

    b = config.bus
    out += ["", "[bus]"] + _lines([
        ("endpoint", b.endpoint), ("events", b.events), ("deadline", b.deadline),
        ("keys", b.keys), ("insecure", b.insecure),
    ], "bus.", d)
    return "\n".join(out) + "\n"


def render_settings(settings: dict[str, Any]) -> str:
    """A config file from a flat {dotted key: value} map (what `init` chose)."""
    top: list[str] = []
    sections: dict[str, list[str]] = {}
    for key, value in settings.items():
        if value is None:
            continue
        section, _, name = key.rpartition(".")
        line = f"{name} = {toml_value(value)}"
        (sections.setdefault(section, []) if section else top).append(line)
    out = ["# AstralBoot configuration, written by `astralboot init`.",
           "# `astralboot config show` prints every setting with its effective value.", ""]
    out += top
    for section, lines in sections.items():
        out += ["", f"[{section}]"] + lines
    return "\n".join(out) + "\n"
