"""An OS folder's ``classes.toml``: its menu title, its classes and its boot policy.

Pure: TOML bytes in, an :class:`OsInfo` out; and which config template a
machine's class picks. No bus, no HTTP.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import Literal

from astralboot.common.messages import MachineRecord
from astralboot.services.httpd.inputs import CLASS_NAME

BootPolicy = Literal["once", "always"]


@dataclass(frozen=True, slots=True)
class OsInfo:
    """One bootable OS folder (``boot/<name>/``) and its ``classes.toml``."""

    name: str
    description: str
    classes: tuple[str, ...] = ()
    boot: BootPolicy = "always"


def parse_os_info(name: str, classes_toml: bytes | None) -> OsInfo:
    """Read ``classes.toml``: ``classes = [...]``, optional ``description`` and ``boot``.

    A broken file still leaves the OS bootable (no classes) rather than hiding it.
    """
    data: dict[str, object] = {}
    if classes_toml:
        try:
            data = tomllib.loads(classes_toml.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError):
            data = {}
    raw_classes = data.get("classes", [])
    classes = tuple(c for c in raw_classes if isinstance(c, str) and CLASS_NAME.fullmatch(c)) \
        if isinstance(raw_classes, list) else ()
    description = data.get("description")
    boot = data.get("boot", "always")
    return OsInfo(name=name,
                  description=description if isinstance(description, str) else name,
                  classes=classes, boot="once" if boot == "once" else "always")


def config_template_names(name: str, machine: MachineRecord | None) -> list[str]:
    """``/config/<os>/<name>``: ``<name>-<class>`` first (the original), then ``<name>``."""
    if machine is not None and machine.machine_class:
        return [f"{name}-{machine.machine_class}", name]
    return [name]
