"""GRUB configs for Secure Boot machines: quoting, translation, menus, routes, trust.

Each config is read back with the rules of GRUB's own lexer (``grub_words``
below, after grub-core/script/yylex.l), checked with GRUB's parser
(``grub-script-check``, from grub-common) where it is installed, and, in the
``qemu`` tests, read by Debian's signed shim + GRUB under OVMF with Secure
Boot on.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from httpd_fakes import FakeStore
from httpd_support import IP, MAC, Client, make_config

from astralboot.services.httpd import grub
from astralboot.services.httpd.app import create_app
from astralboot.services.httpd.errors import UnfitContent
from astralboot.services.httpd.grubmenus import CLIENT_HEADER, machine_address

OSES = ("alpine", "debian", "debian-arm64", "flatcar", "rocky", "ubuntu")
URL = "http://192.0.2.1:8080"
TFTPD = {"remote_addr": "127.0.0.1", "headers": {CLIENT_HEADER: IP}}  # tftpd asking for MAC
GRUB_SCRIPT_CHECK = shutil.which("grub-script-check")


@pytest.fixture(autouse=True)
def at_its_menu(fake: FakeStore) -> None:
    """The machine holds a lease for IP: the address tftpd names in its header."""
    fake.add_lease(IP, MAC)


# --- reading configs back as GRUB does ----------------------------------------------

class Expansion(str):
    """A word GRUB would expand (it has a ``$`` outside single quotes)."""


def grub_words(line: str) -> list[str]:
    """One config line split as GRUB's lexer splits it (yylex.l): single quotes
    are literal up to the next ``'``, a backslash escapes the next character,
    ``$`` outside single quotes expands, ``{ } | & ; < >`` are tokens of their
    own, and ``#`` at a word's start begins a comment."""
    words: list[str] = []
    cur: list[str] = []
    started = expands = False
    i = 0

    def end() -> None:
        nonlocal cur, started, expands
        if started:
            text = "".join(cur)
            words.append(Expansion(text) if expands else text)
        cur, started, expands = [], False, False

    while i < len(line):
        c = line[i]
        if c == "'":
            j = line.find("'", i + 1)
            assert j >= 0, f"unterminated quote in {line!r}"
            cur.append(line[i + 1:j])
            started, i = True, j + 1
        elif c == "\\":
            assert i + 1 < len(line), f"trailing backslash in {line!r}"
            cur.append(line[i + 1])
            started, i = True, i + 2
        elif c == '"':
            raise AssertionError(f"double quotes are not ours: {line!r}")
        elif c in " \t":
            end()
            i += 1
        elif c in "{}|&;<>":
            end()
            words.append(c)
            i += 1
        elif c == "#" and not started:
            break
        else:
            if c == "$":
                expands = True
            cur.append(c)
            started, i = True, i + 1
    end()
    return words


def blocks(config: str) -> list[tuple[str, str, list[list[str]]]]:
    """The config's menu entries as (title, id, commands), read with grub_words."""
    out: list[tuple[str, str, list[list[str]]]] = []
    current: list[list[str]] | None = None
    for line in config.splitlines():
        words = grub_words(line)
        if not words:
            continue
        if words[0] == "menuentry":
            assert current is None, "a menuentry inside a menuentry"
            assert words[2] == "--id" and words[-1] == "{", words
            current = []
            out.append((words[1], words[3], current))
        elif words == ["}"]:
            assert current is not None, "a } outside any menuentry"
            current = None
        elif current is not None:
            current.append(words)
    assert current is None, "a menuentry left open"
    return out


def script_check(text: str) -> None:
    if GRUB_SCRIPT_CHECK is None:
        return
    r = subprocess.run([GRUB_SCRIPT_CHECK], input=text.encode(), capture_output=True,
                       timeout=30)
    assert r.returncode == 0, f"grub-script-check: {r.stdout!r} {r.stderr!r}\n{text}"


def ipxe(client: Client, os: str) -> str:
    r = client.simulate_get(f"/boot/{os}/{MAC}")
    assert r.status_code == 200, r.text
    return r.text


# --- quoting -----------------------------------------------------------------------

HOSTILE = [
    "a'b",
    "'",
    "''",
    "it's '\\'' tricky",
    "$root",
    "${prefix}/x",
    "a;reboot",
    "x}\n}\nmenuentry 'evil' {\n\treboot\n}",
    "a\nreboot",
    "a\r\nreboot",
    "\\",
    "a\\",
    "#comment",
    "`id` $(id)",
    "a && reboot || halt",
    "<x >y | z &",
    "in",
    "fi",
    "menuentry",
    "",
    "é ü 日本",
    "\x00\x01\x7f",
]


def _no_controls(text: str) -> str:
    return "".join(c for c in text if not (ord(c) < 32 or ord(c) == 127))


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_value_is_one_literal_word(value: str) -> None:
    word = grub.grub_word(value)
    assert "\n" not in word and "\r" not in word
    words = grub_words(f"linux /image/debian/linux {word} quiet")
    assert words == ["linux", "/image/debian/linux", _no_controls(value), "quiet"]
    assert not any(isinstance(w, Expansion) for w in words)


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_value_cannot_leave_its_menuentry(value: str) -> None:
    config = grub.boot("test", value, [f"linux /k {grub.grub_word(value)}", "boot"])
    script_check(config)
    entries = blocks(config)
    assert [(t, i) for t, i, _ in entries] == [(_no_controls(value).strip() or "-", "boot"),
                                               ("Boot from local disk", "local")]
    assert entries[0][2] == [["linux", "/k", _no_controls(value)], ["boot"]]


@pytest.mark.skipif(GRUB_SCRIPT_CHECK is None, reason="grub-common is not installed")
def test_grub_script_check_catches_naive_quoting() -> None:
    # The negative control: what the checks above would see without grub_word.
    with pytest.raises(AssertionError):
        script_check("menuentry 'x' {\n\tlinux /k 'a'b'\n}\n")
    with pytest.raises(AssertionError):
        script_check("menuentry 'x' {\n\tlinux /k x}\n}\n")


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_reads_back_as_itself(value: str) -> None:
    assert grub_words("echo " + grub.grub_word(value)) == ["echo", _no_controls(value)]


def test_plain_words_stay_bare_and_reserved_words_are_quoted() -> None:
    assert grub.grub_word("console=ttyS0,115200n8") == "console=ttyS0,115200n8"
    assert grub.grub_word("/image/debian/linux") == "/image/debian/linux"
    assert grub.grub_word("ds=nocloud;s=http://x/") == "'ds=nocloud;s=http://x/'"
    assert grub.grub_word("a'b") == "'a'\\''b'"
    assert grub.grub_word("$x") == "'$x'"
    assert grub.grub_word("fi") == "'fi'"
    assert grub.grub_word("") == "''"


def test_a_comment_cannot_start_a_quote_that_runs_on() -> None:
    # "#x'..." is not a comment to GRUB's lexer but the start of a quoted word.
    line = grub.grub_comment("menu for x'y\n}\nreboot $z")
    assert line.startswith("# AstralBoot: ") and "'" not in line and "\n" not in line
    assert grub_words(line) == []


# --- translating start scripts --------------------------------------------------------

def test_debian_start_script_becomes_linux_initrd_boot(client: Client, fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP, name="web1")
    script = ipxe(client, "debian")
    assert "initrd=initrd.gz" in script  # iPXE's, for the UEFI stub
    assert grub.from_ipxe(script, "debian", URL) == [
        "linux /image/debian/linux auto=true priority=critical "
        "preseed/url=http://192.0.2.1:8080/action/debian/preseed hostname=web1 "
        "domain=lab.test console=tty0 console=ttyS0,115200n8",
        "initrd /image/debian/initrd.gz",
        "boot"]


@pytest.mark.parametrize("os", OSES)
def test_every_bundled_start_script_translates_with_its_arguments_kept(
        client: Client, fake: FakeStore, os: str) -> None:
    fake.add_machine(MAC, ip=IP)
    script = ipxe(client, os)
    kernel = next(line.split() for line in script.splitlines() if line.startswith("kernel "))
    initrd = next(line.split() for line in script.splitlines() if line.startswith("initrd "))
    commands = [grub_words(c) for c in grub.from_ipxe(script, os, URL)]
    assert [c[0] for c in commands] == ["linux", "initrd", "boot"]
    assert commands[0][1] == kernel[1].replace(URL, "")
    assert commands[0][2:] == [a for a in kernel[2:] if not a.startswith("initrd=")]
    assert commands[1] == ["initrd", initrd[1].replace(URL, "")]
    assert not any(isinstance(w, Expansion) for c in commands for w in c)


def test_ubuntu_seed_argument_keeps_its_semicolon(client: Client) -> None:
    linux = grub.from_ipxe(ipxe(client, "ubuntu"), "ubuntu", URL)[0]
    assert " 'ds=nocloud;s=http://192.0.2.1:8080/action/ubuntu/' " in linux


def test_several_initrds_become_one_initrd_command() -> None:
    script = (f"#!ipxe\nkernel {URL}/image/x/vmlinuz quiet initrd=a.img initrd=b.img\n"
              f"initrd {URL}/image/x/a.img\ninitrd --name b.img {URL}/image/x/b%20c.img\nboot\n")
    assert grub.from_ipxe(script, "x", URL) == [
        "linux /image/x/vmlinuz quiet", "initrd /image/x/a.img '/image/x/b c.img'", "boot"]


UNBOOTABLE = [
    # (script body after #!ipxe, the line number named, what the message says)
    (f"kernel http://boot.example.net/debian/linux\ninitrd {URL}/image/debian/initrd.gz\nboot",
     2, "not under http://192.0.2.1:8080/image/debian/"),
    ("kernel http://192.0.2.1:8081/image/debian/linux\nboot", 2, "not under"),
    ("kernel https://192.0.2.1:8080/image/debian/linux\nboot", 2, "not under"),
    (f"kernel {URL}/image/alpine/vmlinuz-lts\nboot", 2, "not under"),
    (f"kernel {URL}/tftp/linux\nboot", 2, "not under"),
    (f"kernel {URL}/image/debian/../../config.toml\nboot", 2, "not under"),
    (f"kernel {URL}/image/debian/linux?x=1\nboot", 2, "not under"),
    (f"chain {URL}/boot/debian/{MAC}", 2, "'chain' is not supported"),
    ("sanboot --no-describe --drive 0x80", 2, "'sanboot' is not supported"),
    (f"kernel {URL}/image/debian/linux\nimgexec", 3, "'imgexec' is not supported"),
    (f"echo hello\nkernel {URL}/image/debian/linux\nboot", 2, "'echo' is not supported"),
    (f":retry\nkernel {URL}/image/debian/linux\nboot", 2, "':retry' is not supported"),
    (f"kernel {URL}/image/debian/linux ip=${{net0/ip}}\nboot", 2, "iPXE settings"),
    (f"kernel --foo {URL}/image/debian/linux\nboot", 2, "iPXE option --foo"),
    (f"kernel {URL}/image/debian/linux\ninitrd {URL}/image/debian/initrd.gz /x\nboot", 3,
     "initrd arguments"),
    (f"kernel {URL}/image/debian/linux || goto failed\nboot", 2, "||"),
    ("kernel linux\nboot", 2, "linux is not under"),
    (f"# just a comment\nkernel {URL}/image/debian/linux", 3, "no boot after this kernel"),
    ("boot", 2, "boot without a kernel"),
    ("boot now", 2, "boot with arguments"),
    ("# nothing", 1, "nothing to boot"),
]


@pytest.mark.parametrize(("body", "number", "why"), UNBOOTABLE)
def test_what_grub_cannot_boot_is_a_typed_error_naming_the_line(body: str, number: int,
                                                                why: str) -> None:
    with pytest.raises(grub.NotGrubBootable) as raised:
        grub.from_ipxe(f"#!ipxe\n{body}\n", "debian", URL)
    err = raised.value
    assert isinstance(err, UnfitContent)  # answered as the store's bad_request would be
    assert err.number == number
    assert why in str(err)
    assert f"line {number}" in str(err)


# --- menus ------------------------------------------------------------------------

def test_menu_offers_every_os_and_the_local_disk(client: Client, fake: FakeStore) -> None:
    r = client.simulate_get(f"/grub/{MAC}", **TFTPD)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert r.headers["cache-control"] == "no-store"
    script_check(r.text)
    entries = {i: (t, c) for t, i, c in blocks(r.text)}
    assert list(entries) == [f"os-{os}" for os in OSES] + ["local"]
    assert entries["os-debian"][1] == [["configfile",
                                        Expansion("/grub/choose/debian/$net_default_mac")]]
    title, commands = entries["os-flatcar"]
    assert title.endswith(" >")  # it has classes: a menu of its own
    assert commands == [["configfile", Expansion("/grub/class/flatcar/$net_default_mac")]]
    assert entries["local"][0] == "Boot from local disk"
    assert ["exit"] in entries["local"][1]
    # The config's settings: the operator's default after [menu] timeout.
    assert "\nset timeout=10\nset default=os-debian\n" in r.text
    assert [(e.stage, e.mac, e.ip, e.detail) for e in fake.reported] == [
        ("http.script", MAC, IP, "grub menu")]


@pytest.mark.parametrize(("default", "timeout", "expected"), [
    ("rocky", 0, "set timeout=-1\nset default=os-rocky"),      # 0 waits forever
    ("windows", 5, "set timeout=5\nset default=local"),        # not an OS: the disk
    ("", 5, "set timeout=5\nset default=local"),               # none set: the disk
    ("local", 7, "set timeout=7\nset default=local"),
    ("shell", 5, "set timeout=-1\nset default=local"),         # no GRUB shell: wait
])
def test_menu_default_and_timeout_follow_the_config(tmp_path: Path, data: Path, fake: FakeStore,
                                                     default: str, timeout: int,
                                                     expected: str) -> None:
    config = make_config(tmp_path, data, http__port=8080, menu__default=default,
                         menu__timeout=timeout)
    text = Client(create_app(fake, config)).simulate_get(f"/grub/{MAC}", **TFTPD).text
    assert f"\n{expected}\n" in text
    script_check(text)


def test_class_menu_lists_the_classes_first_one_default(client: Client,
                                                         fake: FakeStore) -> None:
    r = client.simulate_get(f"/grub/class/flatcar/{MAC}", **TFTPD)
    assert r.status_code == 200
    script_check(r.text)
    entries = [(i, c) for _, i, c in blocks(r.text)]
    assert entries[:2] == [
        ("os-etcd", [["configfile", Expansion("/grub/setclass/flatcar/etcd/$net_default_mac")]]),
        ("os-worker", [["configfile",
                        Expansion("/grub/setclass/flatcar/worker/$net_default_mac")]])]
    assert entries[2][0] == "local"
    assert "\nset default=os-etcd\n" in r.text
    assert (fake.reported[-1].detail, fake.reported[-1].ip) == ("flatcar classes", IP)


def test_hostile_os_description_stays_a_title(client: Client, data: Path) -> None:
    evil = "Evil' }\nmenuentry 'x' { reboot }\n$(id) ${root} \\"
    (data / "boot/debian/classes.toml").write_text(
        'description = """' + evil.replace("\\", "\\\\") + '"""\nboot = "once"\n')
    client.app.catalog.forget()
    text = client.simulate_get(f"/grub/{MAC}", **TFTPD).text
    script_check(text)
    entries = blocks(text)
    assert len(entries) == len(OSES) + 1
    assert entries[1][:2] == (_no_controls(evil), "os-debian")
    chosen = client.simulate_get(f"/grub/choose/debian/{MAC}", **TFTPD).text
    script_check(chosen)
    assert blocks(chosen)[0][0] == _no_controls(evil)


# --- routes -------------------------------------------------------------------------

def test_machine_with_an_os_boots_it(client: Client, fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP, os="debian", name="web1")
    r = client.simulate_get(f"/grub/{MAC}", **TFTPD)
    assert r.status_code == 200
    script_check(r.text)
    assert "\nset timeout=0\nset default=boot\nset fallback=local\n" in r.text
    (title, _, commands), (_, local, _) = blocks(r.text)
    assert title == "Debian 12 (bookworm): unattended install" and local == "local"
    assert [c[0] for c in commands] == ["linux", "initrd", "boot"]
    assert commands[0][1] == "/image/debian/linux" and "hostname=web1" in commands[0]
    assert [(e.stage, e.mac, e.ip, e.detail) for e in fake.reported] == [
        ("http.script", MAC, IP, "debian/start")]


def test_machine_whose_os_folder_is_gone_is_404(client: Client, fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP, os="plan9")
    assert client.simulate_get(f"/grub/{MAC}", **TFTPD).status_code == 404


def test_boot_once_installs_once_then_boots_the_disk(client: Client, fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP, os="debian", boot_once=True)
    first = client.simulate_get(f"/grub/{MAC}", **TFTPD).text
    assert "\tlinux /image/debian/linux " in first
    assert client.simulate_get("/action/debian/preseed").status_code == 200  # installer runs
    after = client.simulate_get(f"/grub/{MAC}", **TFTPD)
    assert after.status_code == 200
    script_check(after.text)
    assert "linux" not in after.text and "menuentry" not in after.text
    lines = after.text.splitlines()
    assert "\t\tchainloader $loader" in lines and lines[-1] == "exit"
    assert (fake.reported[-1].detail, fake.reported[-1].ip) == ("local disk", IP)


def test_choosing_assigns_the_os_and_boots_it(client: Client, fake: FakeStore) -> None:
    r = client.simulate_get(f"/grub/choose/debian/{MAC}", **TFTPD)
    assert r.status_code == 200, r.text
    script_check(r.text)
    m = fake.machines_by_mac[MAC]
    assert (m.os, m.boot_once) == ("debian", True)
    assert [c.actor for c in fake.changes] == [f"menu@{IP}"]
    commands = blocks(r.text)[0][2]
    assert commands[0][:2] == ["linux", "/image/debian/linux"]
    assert f"hostname={m.name}" in commands[0]  # rendered for the record just made
    assert (fake.reported[-1].stage, fake.reported[-1].mac, fake.reported[-1].ip,
            fake.reported[-1].detail) == ("http.script", MAC, IP, "debian chosen")
    # Next boot, GRUB's first read boots it straight away.
    again = client.simulate_get(f"/grub/{MAC}", **TFTPD).text
    assert blocks(again)[0][2] == commands


def test_setclass_records_os_and_class(client: Client, fake: FakeStore) -> None:
    r = client.simulate_get(f"/grub/setclass/flatcar/worker/{MAC}", **TFTPD)
    assert r.status_code == 200
    assert "/image/flatcar/flatcar_production_pxe.vmlinuz" in r.text
    m = fake.machines_by_mac[MAC]
    assert (m.os, m.machine_class) == ("flatcar", "worker")
    assert fake.reported[-1].detail == "flatcar/worker chosen"


def test_setclass_with_an_unknown_class_is_404_and_records_nothing(client: Client,
                                                                  fake: FakeStore) -> None:
    assert client.simulate_get(f"/grub/setclass/flatcar/db/{MAC}", **TFTPD).status_code == 404
    assert client.simulate_get(f"/grub/choose/windows/{MAC}", **TFTPD).status_code == 404
    assert fake.changes == []


def test_an_os_grub_cannot_boot_is_refused_and_not_recorded(client: Client, fake: FakeStore,
                                                            data: Path) -> None:
    (data / "boot/debian/template/start.tmpl").write_text(
        "#!ipxe\nkernel http://boot.example.net/linux\nboot\n")
    r = client.simulate_get(f"/grub/choose/debian/{MAC}", **TFTPD)
    assert r.status_code == 400
    assert "line 2" in r.json["description"] and "boot.example.net" in r.json["description"]
    assert fake.changes == [] and MAC not in fake.machines_by_mac  # no loop on next boot


def test_a_machine_given_such_an_os_gets_the_reason(client: Client, fake: FakeStore,
                                                    data: Path) -> None:
    (data / "boot/debian/template/start.tmpl").write_text(
        "#!ipxe\nkernel http://boot.example.net/linux\nboot\n")
    fake.add_machine(MAC, ip=IP, os="debian")  # through the API, say
    r = client.simulate_get(f"/grub/{MAC}", **TFTPD)
    assert r.status_code == 400 and "cannot boot through GRUB" in r.json["description"]


@pytest.mark.parametrize("bad", ["52:54:00:12:34", "x", "52:54:00:12:34:56%0Areboot",
                                 "%24net_default_mac", ""])
def test_bad_macs_are_rejected_and_change_nothing(client: Client, fake: FakeStore,
                                                  bad: str) -> None:
    for url in (f"/grub/{bad}", f"/grub/choose/debian/{bad}", f"/grub/class/flatcar/{bad}",
                f"/grub/setclass/flatcar/etcd/{bad}"):
        assert client.simulate_get(url, **TFTPD).status_code in (400, 404), url
    assert fake.changes == [] and fake.reported == []


def test_self_service_off_refuses_grub_choices_too(tmp_path: Path, data: Path,
                                                   fake: FakeStore) -> None:
    config = make_config(tmp_path, data, http__self_service=False)
    r = Client(create_app(fake, config)).simulate_get(f"/grub/choose/debian/{MAC}", **TFTPD)
    assert r.status_code == 403 and fake.changes == []


# --- whose request it is ------------------------------------------------------------

@pytest.mark.parametrize(("peer", "header", "expected"), [
    ("127.0.0.1", IP, IP),             # tftpd on loopback
    ("127.0.0.53", IP, IP),            # any loopback address
    ("::1", IP, IP),
    ("192.0.2.1", IP, IP),             # tftpd from the server's own address
    ("127.0.0.1", f" ::ffff:{IP} ", IP),
    ("127.0.0.1", None, "127.0.0.1"),  # no header: the peer
    ("192.0.2.151", IP, "192.0.2.151"),  # a host on the boot network: header ignored
    ("198.51.100.9", IP, "198.51.100.9"),
    (IP, "192.0.2.151", IP),
])
def test_the_header_counts_only_from_this_server(peer: str, header: str | None,
                                                 expected: str) -> None:
    assert machine_address(peer, header, "192.0.2.1") == expected


def test_a_boot_network_host_cannot_choose_for_another_machine(client: Client,
                                                               fake: FakeStore) -> None:
    fake.add_lease("192.0.2.151", "52:54:00:99:99:99")  # another machine on the network
    for source in ("192.0.2.151", "192.0.2.77"):
        r = client.simulate_get(f"/grub/choose/debian/{MAC}", remote_addr=source,
                                headers={CLIENT_HEADER: IP})
        assert r.status_code == 403, r.text
        assert fake.reported[-1].stage == "http.refused"
        assert fake.reported[-1].ip == source and source in fake.reported[-1].detail
    assert fake.changes == [] and MAC not in fake.machines_by_mac


def test_tftpd_asking_for_the_machine_may_choose(client: Client, fake: FakeStore) -> None:
    r = client.simulate_get(f"/grub/choose/debian/{MAC}", remote_addr="192.0.2.1",
                            headers={CLIENT_HEADER: IP})
    assert r.status_code == 200
    assert [c.actor for c in fake.changes] == [f"menu@{IP}"]


def test_tftpd_naming_another_machine_is_refused(client: Client, fake: FakeStore) -> None:
    fake.add_lease("192.0.2.151", "52:54:00:99:99:99")
    r = client.simulate_get(f"/grub/choose/debian/{MAC}", remote_addr="127.0.0.1",
                            headers={CLIENT_HEADER: "192.0.2.151"})
    assert r.status_code == 403 and fake.changes == []


def test_loopback_without_the_header_is_not_the_machine(client: Client, fake: FakeStore) -> None:
    r = client.simulate_get(f"/grub/choose/debian/{MAC}", remote_addr="127.0.0.1")
    assert r.status_code == 403 and fake.changes == []


def test_a_header_that_is_not_an_address_is_400(client: Client, fake: FakeStore) -> None:
    r = client.simulate_get(f"/grub/{MAC}", remote_addr="127.0.0.1",
                            headers={CLIENT_HEADER: "192.0.2.150\nx"})
    assert r.status_code == 400 and fake.reported == []


def test_the_header_means_nothing_on_the_ipxe_urls(client: Client, fake: FakeStore) -> None:
    r = client.simulate_get(f"/choose/debian/{MAC}", **TFTPD)
    assert r.status_code == 403 and fake.changes == []


# --- every config, through GRUB's parser -------------------------------------------------

@pytest.mark.skipif(GRUB_SCRIPT_CHECK is None, reason="grub-common is not installed")
def test_every_rendered_config_passes_grub_script_check(client: Client, fake: FakeStore) -> None:
    texts = [client.simulate_get(f"/grub/{MAC}", **TFTPD).text,
             client.simulate_get(f"/grub/class/flatcar/{MAC}", **TFTPD).text]
    for os in OSES:
        r = client.simulate_get(f"/grub/choose/{os}/{MAC}", **TFTPD)
        assert r.status_code == 200, (os, r.text)
        texts.append(r.text)
    texts.append(grub.local_boot("done"))
    for text in texts:
        script_check(text)
        r = subprocess.run([GRUB_SCRIPT_CHECK], input=(text + "}\n").encode(),
                           capture_output=True, timeout=30)
        assert r.returncode != 0  # and the checker does notice a stray brace


# --- real firmware: OVMF with Secure Boot, Debian's signed shim and GRUB ----------------

DI = Path("/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
GUEST_MAC = "52:54:00:5b:00:11"
needs_firmware = pytest.mark.skipif(
    not (shutil.which("qemu-system-x86_64") and OVMF_CODE.exists() and OVMF_VARS.exists()
         and (DI / "grubx64.efi").exists()),
    reason="needs qemu-system-x86, ovmf and debian-installer-12-netboot-amd64")


def _tftp_root(folder: Path) -> Path:
    """What tftpd serves GRUB, laid out for QEMU's own TFTP server (a stand-in)."""
    root = folder / "tftp"
    (root / "debian-installer/amd64/grub").mkdir(parents=True)
    for name in ("bootnetx64.efi", "grubx64.efi"):
        shutil.copy(DI / name, root / "debian-installer/amd64" / name)
    return root


# On the console when the guest is stuck: the firmware's boot manager, GRUB's prompt.
STUCK = (b'"UiApp"', b"grub> ")


def _boot(folder: Path, root: Path, marker: str, disk: Path | None = None,
          limit: float = 300) -> str:
    """Boot the guest until ``marker`` is on its serial console, or it is stuck;
    the console so far."""
    shutil.copy(OVMF_VARS, folder / "vars.fd")
    log = folder / "serial.log"
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-nographic", "-no-reboot",
            "-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={folder}/vars.fd",
            "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=no",
            "-netdev", f"user,id=n0,tftp={root},"
                       "bootfile=debian-installer/amd64/bootnetx64.efi",
            "-device", f"virtio-net-pci,netdev=n0,mac={GUEST_MAC},romfile=,bootindex=1"]
    if disk is not None:
        argv += ["-drive", f"if=none,id=d0,format=raw,file=fat:rw:{disk}",
                 "-device", "virtio-blk-pci,drive=d0,bootindex=2"]
    with log.open("wb") as out:
        guest = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + limit
            while time.monotonic() < deadline and guest.poll() is None:
                seen = log.read_bytes()
                if marker.encode() in seen or any(s in seen for s in STUCK):
                    break
                time.sleep(1)
        finally:
            guest.kill()
            guest.wait(timeout=30)
    return log.read_bytes().decode("utf-8", "replace")


@pytest.mark.qemu
@needs_firmware
def test_signed_grub_takes_the_menu_default_and_boots_the_chosen_os(
        tmp_path: Path, data: Path, fake: FakeStore) -> None:
    config = make_config(tmp_path, data, http__port=8080, menu__default="debian",
                         menu__timeout=1)
    client = Client(create_app(fake, config))
    fake.add_lease(IP, GUEST_MAC)
    root = _tftp_root(tmp_path)
    images = root / "image/debian"
    images.mkdir(parents=True)
    for name in ("linux", "initrd.gz"):
        shutil.copy(DI / name, images / name)
    (root / "debian-installer/amd64/grub/grub.cfg").write_text(
        client.simulate_get(f"/grub/{GUEST_MAC}", **TFTPD).text)
    chosen = client.simulate_get(f"/grub/choose/debian/{GUEST_MAC}", **TFTPD)
    assert chosen.status_code == 200, chosen.text
    (root / "grub/choose/debian").mkdir(parents=True)
    (root / f"grub/choose/debian/{GUEST_MAC}").write_text(chosen.text)

    console = _boot(tmp_path, root, "Command line: ")
    assert "Debian 12 (bookworm): unattended install" in console  # our menu, on screen
    assert "EFI stub: UEFI Secure Boot is enabled." in console
    line = next(x for x in console.splitlines() if "Command line: " in x)
    name = fake.machines_by_mac[GUEST_MAC].name
    assert line.split("Command line: ", 1)[1].strip() == (
        "BOOT_IMAGE=/image/debian/linux auto=true priority=critical "
        f"preseed/url={URL}/action/debian/preseed hostname={name} domain=lab.test "
        "console=tty0 console=ttyS0,115200n8")


@pytest.mark.qemu
@needs_firmware
def test_signed_grub_boots_the_local_disk_after_the_install(tmp_path: Path,
                                                             fake: FakeStore,
                                                             client: Client) -> None:
    fake.add_lease(IP, GUEST_MAC)
    fake.add_machine(GUEST_MAC, os="debian", labels={"astralboot/next-boot": "disk"})
    root = _tftp_root(tmp_path)
    (root / "debian-installer/amd64/grub/grub.cfg").write_text(
        client.simulate_get(f"/grub/{GUEST_MAC}", **TFTPD).text)
    # The disk: a FAT partition with the signed shim and GRUB at the removable-media path,
    # whose grub.cfg says it ran. (GRUB's exit alone leaves OVMF at its boot manager.)
    disk = tmp_path / "disk"
    (disk / "EFI/BOOT").mkdir(parents=True)
    (disk / "debian-installer/amd64/grub").mkdir(parents=True)
    shutil.copy(DI / "bootnetx64.efi", disk / "EFI/BOOT/BOOTX64.EFI")
    shutil.copy(DI / "grubx64.efi", disk / "EFI/BOOT/grubx64.efi")
    (disk / "debian-installer/amd64/grub/grub.cfg").write_text(
        "echo THE-LOCAL-DISK-BOOTED\nsleep 2\nhalt\n")

    console = _boot(tmp_path, root, "THE-LOCAL-DISK-BOOTED", disk=disk)
    assert "Booting from local disk" in console
    assert "THE-LOCAL-DISK-BOOTED" in console, console[-3000:]
    assert '"UiApp"' not in console  # not the firmware's boot manager
