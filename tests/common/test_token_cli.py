"""``astralboot token`` against a real store: make, use, list, revoke, audit, restart."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from astralboot.common import tokens
from astralboot.common.bus.client import SyncBusClient
from astralboot.common.config import load
from support.stack import Stack, write_config
from astralboot.common.messages import (ErrorReply, EventList, EventListReply, TokenCheck,
                                        TokenCreate, TokenReply)


def test_tokens_are_made_listed_checked_and_revoked(short_tmp: Path) -> None:
    config_path = write_config(short_tmp, interface="lo", address="192.0.2.1")
    config = load(config_path)
    with Stack(config_path, services=("store",)) as stack:
        made = stack.cli("token", "create", "ci-bot", "--save")
        assert made.returncode == 0, made.stderr
        secret = made.stdout.strip().splitlines()[-1]  # alone on the last line
        assert tokens.well_formed(secret)
        saved = tokens.token_path(short_tmp)
        assert tokens.load(saved) == secret
        assert stat.S_IMODE(os.stat(saved).st_mode) == 0o600
        reader = stack.cli("token", "create", "grafana", "--read-only").stdout.splitlines()[-1]
        again = stack.cli("token", "create", "ci-bot", check=False)
        assert again.returncode == 1 and "exists" in again.stderr

        listing = stack.cli("token", "list").stdout
        assert "ci-bot" in listing and "write" in listing and "grafana" in listing
        assert secret not in listing and tokens.digest(secret) not in listing

        with SyncBusClient(config.bus.endpoint, deadline=5) as bus:
            found = bus.call(TokenCheck(digest=tokens.digest(reader)))
            assert isinstance(found, TokenReply) and found.token.scope == "read"
            # The store never takes a secret for a digest, nor a bad name.
            bad = bus.request(TokenCreate(name="x\ny", scope="write", digest="0" * 64))
            assert isinstance(bad, ErrorReply) and bad.code == "bad_request"
            bad = bus.request(TokenCreate(name="raw", scope="write", digest=secret))
            assert isinstance(bad, ErrorReply) and bad.code == "bad_request"

        stack.restart("store")  # tokens are durable
        with SyncBusClient(config.bus.endpoint, deadline=5) as bus:
            assert isinstance(bus.call(TokenCheck(digest=tokens.digest(secret))), TokenReply)
        assert stack.cli("token", "revoke", "ci-bot").returncode == 0
        with SyncBusClient(config.bus.endpoint, deadline=5) as bus:
            gone = bus.request(TokenCheck(digest=tokens.digest(secret)))
            assert isinstance(gone, ErrorReply) and gone.code == "not_found"
            audit = bus.call(EventList(limit=100))
            assert isinstance(audit, EventListReply)
            stages = [(e.stage, e.detail) for e in audit.events if e.stage.startswith("token.")]
            assert stages == [("token.created", "ci-bot (write)"),
                              ("token.created", "grafana (read)"),
                              ("token.revoked", "ci-bot")]
        assert stack.cli("token", "revoke", "ci-bot", check=False).returncode == 1  # not found
