"""Two httpd instances against one store; the second on another host (a network
namespace) reaching the store over tcp:// and serving from its own cache."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from test_httpd_gunicorn import INITRD, SHA, make_site

from astralboot.common.cli.demo.netns import Lab
from support.stack import Stack, astralboot_argv, write_config

pytestmark = pytest.mark.netns

BUS = "tcp://192.0.2.1:5555"


def test_remote_httpd_serves_byte_identical_images_from_its_own_cache(lab: Lab) -> None:
    folder = Path(tempfile.mkdtemp(prefix="ab-s-"))
    try:
        # The store and a local httpd on the server (192.0.2.1), bus on tcp://.
        local_config, port = make_site(folder / "server", **{"bus.endpoint": BUS})
        text = local_config.read_text()
        local_config.write_text(text.replace('address = "127.0.0.1"', 'address = "192.0.2.1"')
                                .replace('network = "127.0.0.0/8"', 'network = "192.0.2.0/24"')
                                .replace('interface = "lo"', 'interface = "br0"')
                                .replace("127.0.0.100-127.0.0.199", "192.0.2.100-192.0.2.199"))
        # The README's recipe: keys on the store's host, two files carried over.
        setup = subprocess.run(astralboot_argv("keys", "setup", "-c", str(local_config)),
                               capture_output=True, text=True, timeout=60)
        assert setup.returncode == 0, setup.stderr
        carried = folder / "web" / "keys"
        carried.mkdir(parents=True)
        shutil.copy(folder / "server" / "keys" / "store.pub", carried)
        shutil.copy(folder / "server" / "keys" / "httpd.key", carried)
        web = lab.add_host("web", "192.0.2.20/24")
        client = lab.add_host("cli", "192.0.2.30/24")
        remote_cache = folder / "web-cache"
        remote_config = write_config(folder / "web", interface="eth0", address="192.0.2.20",
                                     network="192.0.2.0/24", range="192.0.2.100-192.0.2.199",
                                     data=folder / "web" / "unused", http_port=port,
                                     extra={"bus.endpoint": BUS, "bus.deadline": 2.0,
                                            "bus.keys": str(carried),
                                            "store.cache": str(remote_cache)})
        with Stack(local_config, services=("store", "httpd"), netns=lab.server), \
                Stack(remote_config, services=("httpd",), netns=web.ns):
            got = {}
            for host in ("192.0.2.1", "192.0.2.20"):
                out = folder / f"from-{host}"
                r = client.ns.run(["curl", "-sS", "--max-time", "30", "-D", "-", "-o", str(out),
                                   f"http://{host}:{port}/image/debian/initrd.gz"])
                got[host] = (out.read_bytes(), r.stdout)
            local_bytes, local_headers = got["192.0.2.1"]
            remote_bytes, remote_headers = got["192.0.2.20"]
            assert local_bytes == remote_bytes == INITRD
            assert f'etag: "{SHA}"' in local_headers and f'etag: "{SHA}"' in remote_headers
            # The remote instance streamed the bytes into its own cache once.
            cached = remote_cache / SHA
            assert cached.is_file()
            assert hashlib.sha256(cached.read_bytes()).hexdigest() == SHA
            # Its boot scripts point at its own public URL.
            script = client.ns.run(["curl", "-sS", f"http://192.0.2.20:{port}/boot/debian/"
                                    "52:54:00:aa:bb:03"]).stdout
            assert f"kernel http://192.0.2.20:{port}/image/debian/linux" in script
            # A range from the remote cache.
            piece = client.ns.run(["curl", "-sS", "-r", "10-19",
                                   f"http://192.0.2.20:{port}/image/debian/initrd.gz"],
                                  text=False).stdout
            assert piece == INITRD[10:20]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
