"""iPXE scripts: the menus httpd writes itself, and making any script safe and firmware-right.

Pure functions from data to text: which entries the OS and class menus
offer, the menu script itself, and the checks every rendered script passes.
Two rules hold for everything here:

- A value that is not literal script text can never become a new command,
  a new word or a variable expansion: :func:`ipxe_word` percent-encodes
  every character outside a conservative set (no whitespace, no ``$``,
  ``{``, ``}``, ``#``, quotes or ``;``), and :func:`ipxe_text` (menu
  titles) drops control characters and ``$``.
- Under UEFI the kernel's EFI stub only sees an initrd the kernel line names
  (``initrd=<name>``); :func:`name_initrds` adds that to every kernel line of
  a script, which BIOS kernels ignore, so one script is right for both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from astralboot.services.httpd.classes import OsInfo

MAGIC = "#!ipxe"

# Characters left as they are in a word of an iPXE script or a kernel command line.
_WORD_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                       "._~:/@+,-=?&")
_CONTROL = re.compile(r"[\x00-\x1f\x7f$]")


def ipxe_word(value: object) -> str:
    """``value`` as one harmless word: anything outside the safe set is %XX-encoded."""
    text = str(value)
    if all(c in _WORD_SAFE for c in text):
        return text
    return "".join(c if c in _WORD_SAFE else "".join(f"%{b:02X}" for b in c.encode())
                   for c in text)


def ipxe_text(value: object) -> str:
    """``value`` as free text on one line (menu titles): no control characters, no ``$``."""
    return _CONTROL.sub("", str(value)).strip() or "-"


# --- menus -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MenuEntry:
    key: str      # the OS folder name or class name (already validated)
    title: str
    url: str      # where choosing it chains to, may end in ${netX/mac}
    submenu: bool = False


LOCAL = "local"
SHELL = "shell"
MAC_VAR = "${netX/mac}"

# BIOS: boot the first disk through INT 13h. UEFI: give control back to the
# firmware, whose boot order then tries the next entry (the disk).
LOCAL_BOOT = """\
echo Booting from local disk
iseq ${platform} efi && exit 1 ||
sanboot --no-describe --drive 0x80 || exit 1
"""


def _label(key: str) -> str:
    return f"os-{key}"


def menu(title: str, entries: list[MenuEntry], default: str | None, timeout: int,
         extras: bool = True) -> str:
    """An iPXE ``menu``/``item``/``choose`` script.

    ``title`` is script text (it may use iPXE settings such as ``${netX/mac}``;
    callers pass operator text through :func:`ipxe_text`). ``default`` is an
    entry key, ``local`` or ``shell``; ``timeout`` in seconds (0 waits
    forever). A failed chain comes back to the menu.
    """
    keys = {e.key for e in entries}
    lines = [MAGIC, "", ":menu", f"menu {title}"]
    if entries:
        lines.append("item --gap -- Choose:")
    for e in entries:
        more = " >" if e.submenu else ""
        lines.append(f"item {_label(e.key)} {ipxe_text(e.title)}{more}")
    if extras:
        lines += ["item --gap -- Other:",
                  f"item {LOCAL} Boot from local disk",
                  f"item {SHELL} iPXE shell"]
    choose = ["choose"]
    if default in keys:
        choose.append(f"--default {_label(default)}")
    elif default in (LOCAL, SHELL) and extras:
        choose.append(f"--default {default}")
    if timeout > 0:
        choose.append(f"--timeout {timeout * 1000}")
    choose.append("target || goto shell")
    lines += [" ".join(choose), "goto ${target}", ""]
    for e in entries:
        lines += [f":{_label(e.key)}", f"chain {e.url} || goto failed", "goto menu", ""]
    lines += [f":{LOCAL}", LOCAL_BOOT.rstrip("\n"), "goto menu", "",
              f":{SHELL}", "echo Type exit to come back to the menu", "shell", "goto menu", "",
              ":failed", "echo Could not load that; back to the menu in 5 seconds",
              "sleep 5", "goto menu", ""]
    return "\n".join(lines)


def local_boot() -> str:
    """The whole script for a machine whose next boot is its own disk."""
    return f"{MAGIC}\n{LOCAL_BOOT}"


def os_menu(oses: list[OsInfo], public_url: str) -> list[MenuEntry]:
    return [MenuEntry(key=o.name, title=o.description, submenu=bool(o.classes),
                      url=f"{public_url}/{'class' if o.classes else 'choose'}/{o.name}/{MAC_VAR}")
            for o in oses]


def class_menu(os: OsInfo, public_url: str) -> list[MenuEntry]:
    return [MenuEntry(key=c, title=f"{os.description}: {c}",
                      url=f"{public_url}/setclass/{os.name}/{c}/{MAC_VAR}")
            for c in os.classes]


def menu_default(oses: list[OsInfo], wanted: str) -> str:
    """The configured default if it is a bootable OS (or local/shell), else the local disk."""
    if wanted in {o.name for o in oses} or wanted in (LOCAL, SHELL):
        return wanted
    return LOCAL


# --- making a rendered script right for the firmware ----------------------------

_KERNEL_CMDS = ("kernel", "imgselect", "chain", "imgexec", "boot")
_INITRD_CMDS = ("initrd", "imgfetch", "module")
_SPLIT = re.compile(r"\s+")


def _image_name(args: list[str]) -> str | None:
    """The name iPXE gives an image: ``--name``/``-n`` or the URL's last path segment."""
    url = None
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("--name", "-n") and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--name="):
            return a.split("=", 1)[1]
        if a.startswith("-"):
            i += 1
            continue
        url = a
        break
    if url is None:
        return None
    path = urlsplit(url).path if "://" in url else url
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name or None


def name_initrds(script: str) -> str:
    """Add ``initrd=<name>`` to each kernel line for the initrds loaded with it.

    A kernel line's initrds are the ``initrd`` commands between it and the
    next ``boot``/``kernel``. Names already on the line are left alone.
    """
    lines = script.split("\n")
    kernel_at: int | None = None
    wanted: dict[int, list[str]] = {}
    for i, line in enumerate(lines):
        words = _SPLIT.split(line.strip())
        cmd = words[0] if words else ""
        if cmd in ("kernel", "imgselect"):
            kernel_at = i
            wanted[i] = []
        elif cmd in _INITRD_CMDS and kernel_at is not None:
            name = _image_name(words[1:])
            if name is not None:
                wanted[kernel_at].append(name)
        elif cmd in ("boot", "imgexec", "chain"):
            kernel_at = None
    for i, names in wanted.items():
        present = set(_SPLIT.split(lines[i].strip()))
        extra = [f"initrd={n}" for n in names if f"initrd={n}" not in present]
        if extra:
            lines[i] = lines[i].rstrip() + " " + " ".join(extra)
    return "\n".join(lines)


def check_script(script: str) -> str:
    """A rendered start template must be an iPXE script; make it firmware-right."""
    if not script.lstrip().startswith(MAGIC):
        raise ValueError("the script does not start with #!ipxe")
    return name_initrds(script.lstrip())
