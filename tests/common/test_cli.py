"""The CLI as scripts drive it: init, config show, status, option placement."""

from __future__ import annotations

import subprocess
import sys
import warnings
import time
from pathlib import Path

import pexpect

from astralboot.common import tokens
from astralboot.common.config import load
from astralboot.common.cli.demo.netns import Lab
from support.stack import astralboot_argv


def cli(*args: str, input: str | None = None, cwd: Path | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(astralboot_argv(*args), capture_output=True, text=True, input=input,
                          cwd=cwd, timeout=timeout)


def test_init_non_interactive_writes_a_config_that_config_show_reads_back(short_tmp: Path) -> None:
    path = short_tmp / "site" / "config.toml"
    result = cli("init", "--non-interactive", "-c", str(path), "--interface", "br0",
                 "--address", "192.0.2.1", "--range", "192.0.2.100-192.0.2.150",
                 "--dns", "192.0.2.53", "--dns", "192.0.2.54", "--gateway", "192.0.2.254",
                 "--data", "bootfiles", "--no-ipfs", "--ipfs-api", "/ip4/127.0.0.1/tcp/5002",
                 "--db", "sqlite:///leases.db", "--http-port", "8080", "--tftp-port", "6969")
    assert result.returncode == 0, result.stderr
    assert f"wrote {path}" in result.stdout

    shown = cli("config", "show", "-c", str(path))
    assert shown.returncode == 0, shown.stderr
    # --dns names the clients' resolvers: dnsd is not run, and config show says why.
    assert load(path).dnsd.enabled is False
    assert "# option 6 (DNS servers): [dhcp] dns, because [dns] enabled = false" in shown.stdout
    for line in ('address = "192.0.2.1"', 'range = "192.0.2.100-192.0.2.150"',
                 'dns = ["192.0.2.53", "192.0.2.54"]', 'gateway = "192.0.2.254"',
                 f'data = "{path.parent}/bootfiles"', 'port = 8080', 'port = 6969',
                 f'database = "sqlite:///{path.parent}/leases.db"',
                 'api = "/ip4/127.0.0.1/tcp/5002"'):
        assert line in shown.stdout
    # What `config show` prints is itself a config that loads to the same settings.
    (short_tmp / "site" / "shown.toml").write_text(shown.stdout)
    assert load(short_tmp / "site" / "shown.toml").dhcp == load(path).dhcp
    # The data folder was created with the original layout.
    for sub in ("boot", "tftp", "bin"):
        assert (path.parent / "bootfiles" / sub).is_dir()
    # No default secrets: a random password (printed once, kept only as its hash),
    # an admin token readable by its owner alone, and no install by default.
    config = load(path)
    assert config.menu.default == "local"
    printed = [line for line in result.stdout.splitlines() if "user password" in line]
    password = printed[0].rsplit(" ", 1)[-1]
    assert len(password) == 16 and password not in path.read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # noqa: PLC0415 (deprecated, present on 3.11: checks the hash)
    hashed = config.install.password_hash
    assert hashed is not None and crypt.crypt(password, hashed) == hashed
    token = tokens.load(tokens.token_path(path.parent))
    assert oct((path.parent / "admin.token").stat().st_mode & 0o777) == "0o600"
    import sqlalchemy as sa  # noqa: PLC0415
    engine = sa.create_engine(config.store.database)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT name, scope, digest FROM tokens")).all()
    engine.dispose()
    assert rows == [("admin", "write", tokens.digest(token))]  # only the digest is kept


def test_init_never_replaces_a_config_without_force(short_tmp: Path) -> None:
    path = short_tmp / "config.toml"
    path.write_text("# mine\n")
    args = ("init", "--non-interactive", "-c", str(path), "--interface", "br0",
            "--address", "192.0.2.1", "--no-data")
    refused = cli(*args)
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert path.read_text() == "# mine\n"
    assert cli(*args, "--force").returncode == 0
    assert load(path).address.exploded == "192.0.2.1"


def test_init_checks_values_before_writing(short_tmp: Path) -> None:
    path = short_tmp / "config.toml"
    result = cli("init", "--non-interactive", "-c", str(path), "--interface", "br0",
                 "--address", "192.0.2.1", "--range", "10.0.0.1-10.0.0.9", "--no-data")
    assert result.returncode == 2
    assert "dhcp.range" in result.stderr and "not inside 192.0.2.0/24" in result.stderr
    assert not path.exists() and list(short_tmp.iterdir()) == []


def test_init_without_a_terminal_asks_for_flags(short_tmp: Path) -> None:
    result = cli("init", "-c", str(short_tmp / "config.toml"), input="")
    assert result.returncode == 2 and "--non-interactive" in result.stderr
    needs_interface = cli("init", "--non-interactive", "-c", str(short_tmp / "config.toml"))
    assert needs_interface.returncode == 2 and "--interface" in needs_interface.stderr


def test_init_asks_the_setup_questions_and_warns_about_a_single_interface(
        lab: Lab, short_tmp: Path) -> None:
    path = short_tmp / "config.toml"
    child = pexpect.spawn(lab.server.argv(astralboot_argv("init", "-c", str(path)))[0],
                          lab.server.argv(astralboot_argv("init", "-c", str(path)))[1:],
                          encoding="utf-8", timeout=30)
    child.expect("only ONE network interface \\(br0\\)")
    child.expect("Serve DHCP on it anyway\\? \\[no\\]")
    child.sendline("yes")
    child.expect("Which interface")
    child.expect("br0 +192.0.2.1/24")
    child.expect("Select \\[br0\\]")
    child.sendline("")
    child.expect("address on that network \\[192.0.2.1\\]")
    child.sendline("")
    child.expect("Addresses to hand out \\(START-END\\) \\[192.0.2.128-192.0.2.254\\]")
    child.sendline("192.0.2.300-1")
    child.expect("not an IPv4 address; try again")
    child.sendline("192.0.2.100-192.0.2.150")
    child.expect("Where do boot files come from")
    child.sendline("1")
    child.expect("IPFS API address")
    child.sendline("")
    child.expect("Run a DNS server here .* \\[yes\\]")
    child.sendline("")
    child.expect("Upstream DNS server\\(s\\) it forwards to")
    child.sendline("198.18.0.53 nonsense")
    child.expect("'nonsense' is not an address")
    child.sendline("198.18.0.53, 198.18.0.54:5353")
    child.expect("Gateway")
    child.sendline("")
    child.expect("INSTALLS that OS")  # nothing installs unless someone decided it
    child.expect("Menu default \\[local\\]")
    child.sendline("../debian")
    child.expect("not an OS folder name; try again")
    child.sendline("debian")
    child.expect("user password \\(shown only now")
    child.expect("a machine nobody assigned INSTALLS it")
    child.expect("admin API token 'admin'")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    config = load(path)
    assert config.menu.default == "debian"
    assert config.install.password_hash and config.install.password_hash.startswith("$6$")
    assert str(config.dhcp.local.range_start) == "192.0.2.100"
    assert config.ipfs.enabled and config.ipfs.api == "/ip4/127.0.0.1/tcp/5001"
    # dnsd runs, forwarding to what was typed, and clients are told to use it.
    assert config.dnsd.enabled and config.dnsd.upstream == ("198.18.0.53", "198.18.0.54:5353")
    assert [str(d) for d in config.dns] == ["192.0.2.1"]
    assert config.interface == "br0" and not config.dhcp.proxy


def test_declining_a_shared_interface_offers_proxy_mode(lab: Lab, short_tmp: Path) -> None:
    path = short_tmp / "config.toml"
    argv = lab.server.argv(astralboot_argv("init", "-c", str(path), "--no-ipfs",
                                           "--dns", "192.0.2.1", "--gateway", "192.0.2.1"))
    child = pexpect.spawn(argv[0], argv[1:], encoding="utf-8", timeout=30)
    child.expect("Serve DHCP on it anyway\\?")
    child.sendline("")  # the default is no
    child.expect("proxyDHCP mode instead")
    child.sendline("")  # the default is yes
    child.expect("Select")
    child.sendline("")
    child.expect("address on that network")
    child.sendline("")
    child.expect("Menu default")
    child.sendline("")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert load(path).dhcp.proxy is True
    assert load(path).menu.default == "local"


def test_config_flag_works_anywhere_on_the_command_line(short_tmp: Path) -> None:
    path = short_tmp / "config.toml"
    path.write_text('interface = "br0"\naddress = "192.0.2.1"\ndomain = "example.lan"\n')
    for argv in (("-c", str(path), "config", "show"), ("config", "-c", str(path), "show"),
                 ("config", "show", "--config", str(path))):
        result = cli(*argv)
        assert result.returncode == 0, result.stderr
        assert 'domain = "example.lan"' in result.stdout


def test_bad_config_exits_2_naming_file_and_key(short_tmp: Path) -> None:
    path = short_tmp / "config.toml"
    path.write_text('interface = "br0"\naddress = "192.0.2.1"\n[tftp]\nport = -1\n')
    result = cli("config", "show", "-c", str(path))
    assert result.returncode == 2
    assert f"{path}: tftp.port: -1 is out of range" in result.stderr


def test_status_exits_nonzero_within_seconds_when_services_are_down(short_tmp: Path) -> None:
    path = short_tmp / "config.toml"
    path.write_text('interface = "br0"\naddress = "192.0.2.1"\n[http]\nport = 1\n')
    started = time.monotonic()
    result = cli("status", "-c", str(path), "--timeout", "1")
    assert result.returncode == 1
    assert time.monotonic() - started < 10
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines[1:]] == [
        ["store", "DOWN"], ["dhcpd", "DOWN"], ["tftpd", "DOWN"], ["httpd", "DOWN"],
        ["dnsd", "DOWN"]]


def test_version_and_help() -> None:
    assert cli("--version").stdout.startswith("astralboot ")
    helptext = cli("--help").stdout
    for command in ("init", "serve", "status", "events", "machines", "leases", "publish",
                    "precache", "fetch", "demo"):
        assert command in helptext


def test_module_entry_point_is_the_console_script() -> None:
    result = subprocess.run([sys.executable, "-m", "astralboot.common.cli", "--version"],
                            capture_output=True, text=True)
    assert result.returncode == 0


def test_init_system_puts_state_where_the_units_give_room(short_tmp: Path) -> None:
    path = short_tmp / "etc" / "config.toml"
    result = cli("init", "--non-interactive", "--system", "-c", str(path), "--interface", "br0",
                 "--address", "192.0.2.1", "--no-data", "--no-token")
    assert result.returncode == 0, result.stderr
    config = load(path)
    assert str(config.runtime_dir) == "/run/astralboot"
    assert str(config.data) == "/var/lib/astralboot/data"
    assert str(config.store.cache) == "/var/cache/astralboot"
    assert config.store.database == "sqlite:////var/lib/astralboot/astralboot.db"
    assert path.stat().st_mode & 0o007 == 0  # not readable by others
    assert "systemctl enable --now astralboot.target" in result.stdout


def test_a_config_the_service_cannot_read_says_how_to_fix_it(short_tmp: Path) -> None:
    path = short_tmp / "config.toml"
    path.write_text('interface = "br0"\naddress = "192.0.2.1"\n')
    path.chmod(0o600)
    short_tmp.chmod(0o755)
    result = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                             *astralboot_argv("config", "show", "-c", str(path))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "cannot read: Permission denied" in result.stderr
    assert "init --system" in result.stderr and "group astralboot" in result.stderr
