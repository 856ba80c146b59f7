"""GRUB configs: the menus and boot entries httpd writes for Secure Boot machines.

Pure functions from data to text, as ``scripts.py`` is for iPXE. A Secure
Boot machine runs Debian's signed shim and GRUB, which has TFTP but no
HTTP: tftpd fetches these configs from httpd and serves OS images at the
TFTP names ``/image/<os>/<path>``. So:

- :func:`from_ipxe` translates an OS's rendered iPXE start script into
  ``linux``/``initrd``/``boot`` commands over those TFTP names, or raises
  :class:`NotGrubBootable` naming the line GRUB cannot do;
- :func:`menu`, :func:`os_menu`, :func:`class_menu` mirror the iPXE menus;
  choosing an entry reads ``/grub/choose/...`` (or ``/grub/setclass/...``)
  with GRUB's ``$net_default_mac``, so it goes through httpd and is recorded
  as the iPXE ``/choose`` URLs are.

Every value that is not our own literal text goes through :func:`grub_word`
(or :func:`grub_title`), which GRUB's lexer reads back as exactly one word:
no value can become a command, a ``$`` expansion, or close a ``{ }`` block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from astralboot.services.httpd.classes import OsInfo
from astralboot.services.httpd.errors import BadInput, UnfitContent
from astralboot.services.httpd.inputs import check_subpath
from astralboot.services.httpd.scripts import LOCAL

# --- quoting -------------------------------------------------------------------

HEADER = "# AstralBoot"

# Left bare: none of GRUB's metacharacters ({ } | & $ ; < > quotes, backslash,
# blanks), no '#' (a comment at a word's start), no '[' or '!'.
_BARE = re.compile(r"[A-Za-z0-9._~:/@+,=%-]+")
# GRUB's lexer reads these as reserved words when they stand alone.
_RESERVED = frozenset({"case", "do", "done", "elif", "else", "esac", "fi", "for", "function",
                       "if", "in", "select", "then", "until", "while", "time", "menuentry",
                       "submenu"})
# GRUB reads a config line by line and drops carriage returns: control characters
# cannot be carried, even quoted, so they are dropped.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A comment keeps only these: GRUB's lexer reads "#x'..." as the start of a quote
# that runs on into the next lines, not as a comment.
_NOT_COMMENT = re.compile(r"[^A-Za-z0-9 ._:/@,()>-]")


def grub_word(value: object) -> str:
    """``value`` as one literal GRUB word.

    Plain words stay bare; anything else is single-quoted, where GRUB's
    lexer expands nothing and ends the quote only at the next ``'``. A
    ``'`` inside becomes ``'\\''`` (close, an escaped quote, reopen).
    Control characters are dropped.
    """
    text = _CONTROL.sub("", str(value))
    if _BARE.fullmatch(text) and text not in _RESERVED:
        return text
    return "'" + text.replace("'", "'\\''") + "'"


def grub_comment(text: str) -> str:
    """A ``#`` line saying what the config is; only plain characters survive."""
    return f"{HEADER}: {_NOT_COMMENT.sub('', text)}"


def grub_title(value: object) -> str:
    """A menu title: one quoted word on one line, never empty."""
    text = _CONTROL.sub("", str(value)).strip() or "-"
    return "'" + text.replace("'", "'\\''") + "'"


# --- translating an iPXE start script ------------------------------------------------

IMAGE_PREFIX = "/image/"


class NotGrubBootable(UnfitContent):
    """An OS's start script does something GRUB cannot: names the line and why."""

    def __init__(self, os: str, number: int, line: str, why: str) -> None:
        self.os = os
        self.number = number
        self.line = line
        self.why = why
        shown = line if len(line) <= 200 else line[:200] + "..."
        super().__init__(f"{os} cannot boot through GRUB: line {number} of its start "
                         f"script ({shown!r}): {why}")


# iPXE image options: those taking a value, and flags. Both mean nothing to GRUB.
_VALUE_OPTIONS = frozenset({"--name", "-n", "--timeout", "-t"})
_FLAG_OPTIONS = frozenset({"--autofree", "-a", "--replace", "-r"})
_SPLIT = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class _Line:
    number: int
    text: str

    def fail(self, os: str, why: str) -> NotGrubBootable:
        return NotGrubBootable(os, self.number, self.text, why)


def _image_args(line: _Line, os: str, args: list[str]) -> tuple[str, list[str]]:
    """An image command's URL and the words after it, iPXE's options skipped."""
    i = 0
    while i < len(args):
        a = args[i]
        if a in _VALUE_OPTIONS:
            i += 2
        elif a in _FLAG_OPTIONS or a.startswith(("--name=", "--timeout=")):
            i += 1
        elif a.startswith("-"):
            raise line.fail(os, f"iPXE option {a} has no GRUB equivalent")
        else:
            return a, args[i + 1:]
    raise line.fail(os, "no image URL")


def tftp_path(url: str, os: str, public_url: str) -> str | None:
    """The TFTP name tftpd serves ``url`` under, or None if it serves no such name.

    Only this OS's images are there: ``{public_url}/image/<os>/<path>`` is
    ``/image/<os>/<path>``.
    """
    base = urlsplit(public_url.rstrip("/"))
    u = urlsplit(url)
    if (u.scheme.lower(), u.netloc.lower()) != (base.scheme.lower(), base.netloc.lower()):
        return None
    if u.query or u.fragment:
        return None
    prefix = f"{base.path}{IMAGE_PREFIX}{os}/"
    if not u.path.startswith(prefix):
        return None
    try:
        sub = check_subpath(unquote(u.path[len(prefix):]))
    except BadInput:
        return None
    return f"{IMAGE_PREFIX}{os}/{sub}"


def from_ipxe(script: str, os: str, public_url: str) -> list[str]:
    """GRUB commands that boot what an iPXE start script boots.

    ``kernel URL args`` becomes ``linux /image/<os>/<path> args`` (each
    argument one GRUB word, iPXE's ``initrd=<name>`` dropped: GRUB hands the
    kernel its initrd itself), the ``initrd`` lines before the next ``boot``
    become one ``initrd`` command (GRUB keeps only the last one it is
    given), and ``boot`` stays. Comments and blank lines go. Anything else,
    or an image GRUB cannot fetch over TFTP, raises :class:`NotGrubBootable`.
    """
    commands: list[str] = []
    kernel: list[str] | None = None
    kernel_line: _Line | None = None
    initrds: list[str] = []
    for number, raw in enumerate(script.split("\n"), start=1):
        text = raw.strip()
        if not text or text.startswith("#"):  # comments, and the #!ipxe line
            continue
        line = _Line(number, text)
        if "${" in text:
            raise line.fail(os, "it uses iPXE settings (${...}), which GRUB cannot expand")
        words = _SPLIT.split(text)
        cmd, args = words[0], words[1:]
        if cmd in ("kernel", "initrd"):
            url, rest = _image_args(line, os, args)
            path = tftp_path(url, os, public_url)
            if path is None:
                raise line.fail(os, f"{url} is not under {public_url.rstrip('/')}"
                                    f"{IMAGE_PREFIX}{os}/, the only images GRUB can fetch "
                                    "(over TFTP)")
            if any(w in ("||", "&&") for w in rest):
                raise line.fail(os, "iPXE's || and && have no GRUB equivalent here")
            if cmd == "kernel":
                if kernel is not None:
                    raise line.fail(os, "a second kernel before boot")
                kernel_line = line
                kernel = ["linux", grub_word(path)] + [
                    grub_word(w) for w in rest if not w.startswith("initrd=")]
            elif rest:
                raise line.fail(os, "initrd arguments have no GRUB equivalent")
            else:
                initrds.append(grub_word(path))
        elif cmd == "boot":
            if args:
                raise line.fail(os, "boot with arguments has no GRUB equivalent")
            if kernel is None:
                raise line.fail(os, "boot without a kernel")
            commands.append(" ".join(kernel))
            if initrds:
                commands.append(" ".join(["initrd", *initrds]))
            commands.append("boot")
            kernel, initrds = None, []
        else:
            raise line.fail(os, f"GRUB can only boot a kernel and initrds; {cmd!r} is not "
                                "supported")
    if kernel_line is not None and kernel is not None:
        raise kernel_line.fail(os, "no boot after this kernel")
    if initrds:
        raise NotGrubBootable(os, len(script.split("\n")), "", "initrds without a kernel")
    if not commands:
        raise NotGrubBootable(os, 1, script.split("\n", 1)[0].strip(), "nothing to boot")
    return commands


# --- configs ---------------------------------------------------------------------------

MAC_VAR = "$net_default_mac"   # GRUB's efinet sets it: 52:54:00:12:34:56
CHOOSE = "/grub/choose/{os}/"
CLASS = "/grub/class/{os}/"
SETCLASS = "/grub/setclass/{os}/{cls}/"
LOCAL_TITLE = "Boot from local disk"
# GRUB's exit returns success to the firmware, and OVMF (as UEFI allows) then
# stops at its boot manager instead of going on to the disk. So GRUB starts
# the disk's own (signed) loader itself, the installed distribution's shim
# first, then the removable-media path; exit only if the disk has none.
LOCAL_LOADERS = ("/EFI/debian/shimx64.efi", "/EFI/ubuntu/shimx64.efi",
                 "/EFI/rocky/shimx64.efi", "/EFI/redhat/shimx64.efi",
                 "/EFI/fedora/shimx64.efi", "/EFI/BOOT/BOOTX64.EFI",
                 "/EFI/Microsoft/Boot/bootmgfw.efi")
LOCAL_COMMANDS = (
    "echo 'Booting from local disk'",
    f"for loader in {' '.join(LOCAL_LOADERS)}; do",
    "\tif search --no-floppy --file --set=root $loader; then",
    "\t\tchainloader $loader",
    "\t\tboot",
    "\tfi",
    "done",
    "echo 'No boot loader on a local disk: back to the firmware'",
    "exit",
)


@dataclass(frozen=True, slots=True)
class GrubEntry:
    key: str     # the OS folder or class name (already validated)
    title: str
    config: str  # the config it reads, ``/grub/...``, to which the MAC is added
    submenu: bool = False


def _id(key: str) -> str:
    return f"os-{key}"


def _menuentry(title: str, entry_id: str, commands: list[str] | tuple[str, ...]) -> list[str]:
    return ([f"menuentry {grub_title(title)} --id {grub_word(entry_id)} {{"]
            + [f"\t{c}" for c in commands] + ["}"])


def menu(comment: str, entries: list[GrubEntry], default: str | None, timeout: int) -> str:
    """A GRUB menu: the entries, then the local disk; ``default`` after ``timeout`` seconds.

    ``default`` is an entry key or ``local``; anything else (iPXE's ``shell``,
    which GRUB has no match for) waits at the menu with the local disk
    highlighted, so the machine never boots an OS nobody chose. A timeout
    of 0 waits forever.
    """
    keys = {e.key for e in entries}
    wait = timeout <= 0 or default not in keys | {LOCAL}
    lines = [grub_comment(comment),
             f"set timeout={-1 if wait else timeout}",
             f"set default={grub_word(_id(default) if default in keys else LOCAL)}"]
    for e in entries:
        title = f"{e.title} >" if e.submenu else e.title
        lines += _menuentry(title, _id(e.key), [f"configfile {grub_word(e.config)}{MAC_VAR}"])
    lines += _menuentry(LOCAL_TITLE, LOCAL, LOCAL_COMMANDS)
    return "\n".join(lines) + "\n"


def os_menu(oses: list[OsInfo]) -> list[GrubEntry]:
    """An entry per OS folder; one with classes opens its class menu."""
    return [GrubEntry(key=o.name, title=o.description, submenu=bool(o.classes),
                      config=(CLASS if o.classes else CHOOSE).format(os=o.name))
            for o in oses]


def class_menu(os: OsInfo) -> list[GrubEntry]:
    return [GrubEntry(key=c, title=f"{os.description}: {c}",
                      config=SETCLASS.format(os=os.name, cls=c))
            for c in os.classes]


def boot(comment: str, title: str, commands: list[str]) -> str:
    """Boot ``commands`` at once; if they fail, GRUB falls back to the local disk.

    That is what iPXE does too: a failed start script ends iPXE, and the
    firmware goes on to its next boot entry.
    """
    lines = [grub_comment(comment), "set timeout=0", "set default=boot",
             f"set fallback={LOCAL}"]
    lines += _menuentry(title, "boot", commands)
    lines += _menuentry(LOCAL_TITLE, LOCAL, LOCAL_COMMANDS)
    return "\n".join(lines) + "\n"


def local_boot(comment: str) -> str:
    """The whole config for a machine whose next boot is its own disk."""
    return "\n".join([grub_comment(comment), *LOCAL_COMMANDS]) + "\n"

