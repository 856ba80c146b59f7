"""Fixtures for httpd: a data folder copied from the bundled one (with small
fake images), a configuration, a fake store and a falcon TestClient."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from astralboot.common.config.model import Config  # noqa: E402
from astralboot.services.httpd.app import create_app  # noqa: E402
from httpd_fakes import FakeStore  # noqa: E402
from httpd_support import ADMIN, BUNDLED, INITRD, KERNEL, Client, make_config  # noqa: E402


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    shutil.copytree(BUNDLED, folder)
    images = folder / "boot" / "debian" / "images"
    (images / "linux").write_bytes(KERNEL)
    (images / "initrd.gz").write_bytes(INITRD)
    (folder / "bin" / "ipxe.efi").write_bytes(b"MZ fake efi")
    (folder / "tftp" / "undionly.kpxe").write_bytes(b"fake kpxe")
    return folder


@pytest.fixture
def config(tmp_path: Path, data: Path) -> Config:
    return make_config(tmp_path, data, http__port=8080, menu__default="debian",
                       menu__timeout=10)


@pytest.fixture
def fake(data: Path) -> FakeStore:
    return FakeStore(data)


@pytest.fixture
def client(fake: FakeStore, config: Config) -> Client:
    return Client(create_app(fake, config), headers={"User-Agent": "iPXE/1.21.1", **ADMIN})
