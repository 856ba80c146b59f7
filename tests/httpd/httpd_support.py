"""What httpd's tests share: the bundled data folder, a config, a TestClient.

(Not in conftest.py: other test folders have a conftest too, and only one
module can be imported as ``conftest``.)
"""

from __future__ import annotations

import os
from pathlib import Path

import falcon.testing

from astralboot.common.config.load import from_dict
from astralboot.common.config.model import Config

BUNDLED = Path(__file__).resolve().parents[2] / "common" / "bundled"
KERNEL = bytes(range(256)) * 64          # 16 KiB stand-ins for images
INITRD = os.urandom(100_000)

MAC = "52:54:00:12:34:56"
IP = "192.0.2.150"


def make_config(folder: Path, data: Path, **extra: object) -> Config:
    raw: dict[str, object] = {"address": "192.0.2.1", "network": "192.0.2.0/24",
                              "data": str(data), "domain": "lab.test"}
    for key, value in extra.items():
        section, _, name = key.partition("__")
        raw.setdefault(section, {})[name] = value  # type: ignore[index]
    return from_dict(raw, folder / "config.toml")


class Client(falcon.testing.TestClient):
    """Requests come from the test machine's address unless told otherwise."""

    def simulate_request(self, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        kwargs.setdefault("remote_addr", IP)
        result = super().simulate_request(*args, **kwargs)
        self.app.reporter.flush()  # events queued for the background thread are sent
        return result
