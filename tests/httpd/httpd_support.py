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

# The admin tokens every FakeStore knows (the real store gets them from `token create`).
WRITE_TOKEN = "abt_" + "w" * 43
READ_TOKEN = "abt_" + "r" * 43
ADMIN = {"Authorization": f"Bearer {WRITE_TOKEN}"}


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


def admin_token(endpoint: str, *, scope: str = "write") -> str:
    """A new admin token recorded by the real store at ``endpoint``; its secret."""
    import secrets as _secrets

    from astralboot.common import tokens
    from astralboot.common.bus.client import SyncBusClient
    from astralboot.common.messages import TokenCreate, TokenReply

    secret = tokens.new_secret()
    with SyncBusClient(endpoint, deadline=10) as bus:
        reply = bus.call(TokenCreate(name=f"test-{_secrets.token_hex(4)}", scope=scope,  # type: ignore[arg-type]
                                     digest=tokens.digest(secret)))
    assert isinstance(reply, TokenReply)
    return secret
