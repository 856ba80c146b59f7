"""``astralboot init`` and ``astralboot config show``.

``init`` asks the original server's set-up questions on a terminal (which
interface, local folder or IPFS, DNS server and gateway) and writes
config.toml; every answer is also a flag, and ``--non-interactive`` never
prompts. The file is checked by loading it back before it replaces
anything, and the data folder is created from the bundled layout.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, TextIO

from astralboot.common import netif, tokens
from astralboot.common.config import load, render, render_settings
from astralboot.common.config.load import (RESOLV_CONF, default_range, p_multiaddr, p_os_name,
                                           p_password_hash, p_range, p_upstream,
                                           resolv_conf_servers, resolve_database)
from astralboot.common.cli.datafolder import create as create_data_folder
from astralboot.common.errors import ConfigError, StartupError
from astralboot.common.passwords import new_password, sha512_crypt

WARNING_ONE_INTERFACE = """
  !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
  !!  This machine has only ONE network interface ({name}).
  !!  AstralBoot answers DHCP. On a shared (office, home, data centre)
  !!  network it would hand addresses to machines that are not yours and
  !!  can take that network down. Serve on a dedicated boot network, or
  !!  choose proxyDHCP mode, which hands out no addresses at all.
  !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
"""


def add_init_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--non-interactive", action="store_true",
                   help="never ask; take flags and defaults")
    p.add_argument("--force", action="store_true", help="replace an existing config file")
    p.add_argument("--interface", help="the boot network interface, e.g. br0")
    p.add_argument("--address", help="this server's address (default: read from the interface)")
    p.add_argument("--range", dest="range_", metavar="START-END",
                   help="addresses to hand out, e.g. 192.0.2.100-192.0.2.200")
    p.add_argument("--data", help="data folder (default: ./data beside the config)")
    ipfs = p.add_mutually_exclusive_group()
    ipfs.add_argument("--ipfs", dest="ipfs", action="store_true", default=None,
                      help="serve boot files from IPFS (root CID in refs.toml)")
    ipfs.add_argument("--no-ipfs", dest="ipfs", action="store_false",
                      help="serve boot files from the local data folder")
    p.add_argument("--ipfs-api", metavar="MULTIADDR", help="e.g. /ip4/127.0.0.1/tcp/5001")
    p.add_argument("--dns-server", dest="dns_server", action=argparse.BooleanOptionalAction,
                   default=None, help="run AstralBoot's DNS server (dnsd): names for every "
                   "machine, the rest forwarded; clients are told to use it (default: yes, "
                   "unless --dns is given)")
    p.add_argument("--upstream-dns", action="append", metavar="ADDRESS",
                   help="where dnsd forwards what is not the boot network's (repeatable; "
                        "default: this host's /etc/resolv.conf)")
    p.add_argument("--dns", action="append",
                   help="DNS server given to clients instead of dnsd (repeatable)")
    p.add_argument("--gateway", help="router given to clients (default: this server)")
    p.add_argument("--domain", help="DNS domain given to clients")
    p.add_argument("--db", metavar="URL", help="sqlite:///PATH or postgresql://...")
    p.add_argument("--http-port", type=int)
    p.add_argument("--tftp-port", type=int)
    p.add_argument("--proxy", action="store_true", default=None,
                   help="proxyDHCP: give boot information only, no addresses")
    p.add_argument("--no-data", action="store_true",
                   help="do not create or fill the data folder")
    p.add_argument("--menu-default", metavar="OS|local",
                   help="what a machine nobody assigned boots after the menu: 'local' (its "
                        "own disk, the default) or an OS folder, which INSTALLS it unattended")
    p.add_argument("--password-hash", metavar="HASH",
                   help="crypt(3) hash for installed systems' user (default: a random "
                        "password, printed once)")
    p.add_argument("--no-token", action="store_true",
                   help="do not make the first admin API token (admin.token)")
    p.add_argument("--system", action="store_true",
                   help="a system install (implied for /etc/astralboot/...): config in "
                        "/etc/astralboot readable by group astralboot, state where the "
                        "systemd units expect it (/run, /var/lib, /var/cache/astralboot)")


class Asker:
    """Questions on a terminal, each with a default taken on a bare Enter."""

    def __init__(self, stdin: TextIO, stdout: TextIO) -> None:
        self.stdin = stdin
        self.stdout = stdout

    def say(self, text: str) -> None:
        print(text, file=self.stdout, flush=True)

    def ask(self, question: str, default: str | None,
            check: Callable[[str], Any] = lambda v: v) -> Any:
        while True:
            hint = f" [{default}]" if default else ""
            self.stdout.write(f"\n{question}{hint}\n> ")
            self.stdout.flush()
            line = self.stdin.readline()
            if not line:
                raise ConfigError("(terminal)", question, "input ended before an answer")
            answer = line.strip() or (default or "")
            try:
                return check(answer)
            except ValueError as exc:
                self.say(f"  {exc}; try again.")

    def yes_no(self, question: str, default: bool) -> bool:
        def parse(v: str) -> bool:
            if v.lower() in ("y", "yes"):
                return True
            if v.lower() in ("n", "no"):
                return False
            raise ValueError("please answer yes or no")
        return self.ask(question, "yes" if default else "no", parse)

    def choose(self, question: str, options: list[tuple[str, str]], default: str) -> str:
        self.stdout.write(f"\n{question}\n")
        for i, (key, label) in enumerate(options):
            self.stdout.write(f"  {i}: {key:10} {label}\n")
        keys = [k for k, _ in options]

        def parse(v: str) -> str:
            if v in keys:
                return v
            if v.isdigit() and int(v) < len(keys):
                return keys[int(v)]
            raise ValueError(f"pick a number from 0 to {len(keys) - 1}")
        return self.ask("Select", default, parse)


def _ip(v: str) -> str:
    try:
        return str(ipaddress.IPv4Address(v))
    except ipaddress.AddressValueError:
        raise ValueError(f"{v!r} is not an IPv4 address") from None


def _ips(v: str) -> list[str]:
    return [_ip(x.strip()) for x in v.replace(",", " ").split()]


def _upstreams(v: str) -> list[str]:
    return [p_upstream(x) for x in v.replace(",", " ").split()]


def _range_text(v: str) -> str:
    start, end = p_range(v)
    return f"{start}-{end}"


def _interactive(args: argparse.Namespace, asker: Asker) -> None:
    """Fill in every answer the flags did not give."""
    asker.say("AstralBoot set-up. Press Enter to take the [default].")
    found = [i for i in netif.interfaces() if not i.loopback]
    if args.interface is None:
        if not found:
            raise ConfigError("(host)", "interface", "this host has no network interface but lo")
        if len(found) == 1:
            asker.say(WARNING_ONE_INTERFACE.format(name=found[0].name))
            if not asker.yes_no("Serve DHCP on it anyway?", False):
                if asker.yes_no("Use proxyDHCP mode instead (no addresses handed out)?", True):
                    args.proxy = True
                else:
                    raise ConfigError("(answer)", "interface", "no dedicated boot interface")
        options = [(i.name, f"{i.ipv4 or 'no IPv4 address'}  {'up' if i.up else 'DOWN'}")
                   for i in found]
        with_addr = [i.name for i in found if i.ipv4]
        args.interface = asker.choose("Which interface is the boot network on?", options,
                                      with_addr[-1] if with_addr else found[0].name)
    iface = netif.ipv4_of(args.interface)
    if args.address is None:
        args.address = asker.ask("This server's address on that network",
                                 str(iface.ip) if iface else None, _ip)
    network = iface.network if iface and str(iface.ip) == args.address else \
        ipaddress.IPv4Network(f"{args.address}/24", strict=False)
    if args.range_ is None and not args.proxy:
        start, end = default_range(network, {ipaddress.IPv4Address(args.address)})
        args.range_ = asker.ask("Addresses to hand out (START-END)", f"{start}-{end}",
                                _range_text)
    if args.ipfs is None:
        source = asker.choose("Where do boot files come from?",
                              [("local", "a local data folder"),
                               ("ipfs", "IPFS (a root CID in refs.toml)")], "local")
        args.ipfs = source == "ipfs"
    if args.ipfs and args.ipfs_api is None:
        args.ipfs_api = asker.ask("IPFS API address (multiaddr)", "/ip4/127.0.0.1/tcp/5001",
                                  p_multiaddr)
    if args.dns_server is None and args.dns is None:
        args.dns_server = asker.yes_no(
            "Run a DNS server here (a name for every machine; the rest is forwarded)?", True)
    if args.dns_server and args.upstream_dns is None:
        found = resolv_conf_servers(RESOLV_CONF)
        answer = asker.ask("Upstream DNS server(s) it forwards to (empty: none)",
                           ", ".join(found) or None, lambda v: (_upstreams(v), v)[1])
        args.upstream_dns = [answer]
    if not args.dns_server and args.dns is None:
        args.dns = asker.ask("DNS server(s) for clients", args.address, _ips)
    if args.gateway is None:
        args.gateway = asker.ask("Gateway (router) for clients", args.address, _ip)
    if args.menu_default is None:
        asker.say("\nA machine nobody has assigned an OS boots the menu. After its timeout it "
                  "takes the default:\n'local' boots its own disk; an OS folder name (e.g. "
                  "debian) INSTALLS that OS\nunattended, wiping the disk of any machine that "
                  "network-boots here by accident.")
        args.menu_default = asker.ask("Menu default", "local", _menu_default)


def _menu_default(v: str) -> str:
    if v in ("local", "shell"):
        return v
    return p_os_name(v)


SYSTEM_CONFIG = Path("/etc/astralboot/config.toml")
SYSTEM_USER = "astralboot"
# Where the systemd units give the services room to write (RuntimeDirectory=,
# StateDirectory=, CacheDirectory=): ProtectSystem=strict makes all else read-only.
SYSTEM_PATHS = {
    "runtime_dir": "/run/astralboot",
    "data": "/var/lib/astralboot/data",
    "store.cache": "/var/cache/astralboot",
    "store.database": "sqlite:////var/lib/astralboot/astralboot.db",
}


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    dns = [ip for entry in args.dns for ip in _ips(entry)] if args.dns else None
    upstream = ([u for entry in args.upstream_dns for u in _upstreams(entry)]
                if args.upstream_dns is not None else None)
    # --dns names the clients' resolver: that is "no dnsd" unless asked for both.
    dns_server = args.dns_server if args.dns_server is not None else (False if dns else None)
    system = SYSTEM_PATHS if args.system else {}
    return {
        **{k: v for k, v in system.items() if k not in ("data", "store.database")},
        "interface": args.interface,
        "address": args.address,
        "gateway": args.gateway,
        "domain": args.domain,
        "dhcp.dns": dns,
        "data": args.data or system.get("data"),
        "dhcp.range": args.range_,
        "dhcp.proxy": True if args.proxy else None,
        "tftp.port": args.tftp_port,
        "http.port": args.http_port,
        "ipfs.enabled": args.ipfs if args.ipfs is not None else None,
        "ipfs.api": args.ipfs_api,
        "store.database": args.db or system.get("store.database"),
        "menu.default": args.menu_default,
        "install.password_hash": args.password_hash,
        "dns.enabled": dns_server,
        "dns.upstream": upstream,
    }


def cmd_init(args: argparse.Namespace) -> int:
    if args.system and args.config == "config.toml":
        args.config = str(SYSTEM_CONFIG)
    path = Path(args.config).absolute()
    args.system = args.system or path.parent == SYSTEM_CONFIG.parent
    if path.exists() and not args.force:
        print(f"astralboot init: {path} exists; use --force to replace it", file=sys.stderr)
        return 2
    if not args.non_interactive:
        if not sys.stdin.isatty():
            print("astralboot init: no terminal to ask questions on; give the answers as "
                  "flags with --non-interactive (see astralboot init --help)", file=sys.stderr)
            return 2
        _interactive(args, Asker(sys.stdin, sys.stdout))
    elif args.interface is None:
        raise ConfigError(path, "interface", "--interface is required with --non-interactive")
    if args.db:
        resolve_database(path.parent, args.db)  # fail before writing anything
    if args.menu_default is not None:
        args.menu_default = _flag(path, "menu.default", _menu_default, args.menu_default)
    password = None
    if args.password_hash is None:
        password = new_password()
        args.password_hash = sha512_crypt(password)
    args.password_hash = _flag(path, "install.password_hash", p_password_hash,
                               args.password_hash)

    text = render_settings(_settings(args))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".toml", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        config = load(tmp)  # every value checked before it replaces anything
        if args.system:
            _readable_by_the_service(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    print(f"wrote {path}")
    if password is not None:
        print(f"installed systems' user password (shown only now; its hash is in the config): "
              f"{password}")
    if config.menu.default not in ("local", "shell"):
        print(f"menu default: {config.menu.default}: a machine nobody assigned INSTALLS it")
    if not args.no_token:
        _first_token(config)
    if args.system:
        _state_to_the_service(config)
    if not args.no_data:
        # The temporary file sat beside the final one, so its paths are the final ones.
        for line in create_data_folder(config.data):
            print(f"  {line}")
        print(f"data folder: {config.data}")
    if config.ipfs.enabled and config.ipfs.root is None:
        print("IPFS: no refs.toml yet; `astralboot publish` adds the data folder to IPFS "
              "and writes it")
    if args.system:
        print("next: systemctl enable --now astralboot.target (or supervisord, see README)")
    else:
        print(f"next: astralboot serve -c {path}")
    return 0


def _service_ids() -> tuple[int, int] | None:
    import pwd
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _readable_by_the_service(path: Path) -> None:
    """config.toml: root's, readable by group astralboot, nobody else (it holds secrets' paths)."""
    ids = _service_ids()
    if ids is None:
        print(f"note: no user {SYSTEM_USER} yet (systemd-sysusers "
              "/usr/lib/sysusers.d/astralboot.conf makes it): config.toml stays root's alone; "
              f"run `chgrp {SYSTEM_USER} {path} && chmod 640 {path}` afterwards")
        os.chmod(path, 0o600)
        return
    os.chown(path, 0, ids[1])
    os.chmod(path, 0o640)


def _state_to_the_service(config: Any) -> None:
    """What init made that the services write (the database its token went into)."""
    ids = _service_ids()
    if ids is None or os.geteuid() != 0:
        return
    from astralboot.common.privileges import database_files
    for item in database_files(config.store.database):
        target = getattr(item, "path", item)
        if target.exists() and target != config.data:
            os.chown(target, *ids)


def _flag(path: Path, key: str, check: Callable[[Any], Any], value: Any) -> Any:
    try:
        return check(value)
    except ValueError as exc:
        raise ConfigError(path, key, str(exc)) from None


def _first_token(config: Any) -> None:
    """The first admin API token, kept as admin.token beside the config (mode 0600).

    Written straight into the database: the store is not running yet.
    """
    from astralboot.services.store.server import add_token, open_database
    secret = tokens.new_secret()
    try:
        database = open_database(config)
    except StartupError as exc:
        print(f"admin token: not made ({exc.reason}); once the store runs: "
              "astralboot token create admin --save")
        return
    try:
        if not add_token(database, "admin", "write", tokens.digest(secret)):
            print("admin token: the database already has one named admin; kept it "
                  "(astralboot token list)")
            return
    finally:
        database.close()
    path = tokens.token_path(config.folder)
    tokens.save(path, secret)
    print(f"admin API token 'admin' (write): {path} (curl -H \"Authorization: Bearer "
          f"$(cat {path})\" ...)")


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["show"], help="show: print every effective setting")
    p.add_argument("--plain", action="store_true",
                   help="no comments marking default and derived values")


def cmd_config(args: argparse.Namespace) -> int:
    print(render(load(args.config), annotate=not args.plain), end="")
    return 0
