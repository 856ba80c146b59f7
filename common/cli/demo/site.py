"""The config.toml of a lab network: the demo's, and the tests' and benchmarks' too."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from astralboot.common.config import render_settings


def write_config(folder: Path, *, interface: str = "br0", address: str = "192.0.2.1",
                 network: str = "192.0.2.0/24", range: str = "192.0.2.100-192.0.2.199",
                 data: str | Path | None = None, http_port: int = 80,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write ``folder/config.toml`` for a lab; ``extra`` maps dotted keys to values.

    The runtime folder sits in ``folder`` when that keeps socket paths short
    (UNIX socket paths are limited to about 100 characters), else in a new
    folder under /tmp.
    """
    folder.mkdir(parents=True, exist_ok=True)
    runtime = folder / "run"
    if len(str(runtime)) > 60:
        runtime = Path(tempfile.mkdtemp(prefix="ab-run-"))
    settings: dict[str, Any] = {
        "interface": interface,
        "address": address,
        "network": network,
        "runtime_dir": str(runtime),
        "log_level": "info",
        "dhcp.range": range,
        "dhcp.rogue_guard": False,
        "http.port": http_port,
        "http.workers": 2,
    }
    if data is not None:
        settings["data"] = str(data)
    settings.update(extra or {})
    path = folder / "config.toml"
    path.write_text(render_settings(settings))
    return path
