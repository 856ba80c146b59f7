"""An HTTP server standing in for httpd's GRUB pages, for tftpd's lab tests.

Runs inside the lab's server namespace (``python httpd_standin.py ADDRESS
PORT LOG``), prints ``ready`` once it listens, and appends one JSON line
per request to LOG: the path, the ``X-AstralBoot-Client`` header and the
peer's address. What it answers for ``/grub/<mac>`` is :func:`grub_config`,
except for the MACs in :data:`MISBEHAVING`, which fail on cue; choices
(``/grub/choose|class|setclass/...``) are answered with :func:`grub_page`.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CLIENT_HEADER = "X-AstralBoot-Client"
NOT_FOUND_MAC = "02:00:00:00:04:04"
BROKEN_MAC = "02:00:00:00:05:00"
SLOW_MAC = "02:00:00:00:00:5e"
HUGE_MAC = "02:00:00:00:00:b1"
MISBEHAVING = (NOT_FOUND_MAC, BROKEN_MAC, SLOW_MAC, HUGE_MAC)
SLOW_SECONDS = 60
HUGE_SIZE = 1 << 20


def grub_config(mac: str, client: str | None) -> bytes:
    """A machine's GRUB config: names the machine, and spans several TFTP blocks."""
    head = (f"# AstralBoot GRUB config for {mac} (asked for {client})\n"
            "set timeout=5\nset default=0\n"
            f"menuentry 'Debian 12 installer for {mac}' {{\n"
            "  linux /image/debian/linux auto=true priority=critical ---\n"
            "  initrd /image/debian/initrd.gz\n}\n"
            f"menuentry 'Choose another OS' {{\n  configfile /grub/class/debian/{mac}\n}}\n")
    padding = "".join(f"# {mac} line {i:03d}\n" for i in range(120))
    return (head + padding).encode()


def grub_page(path: str, client: str | None) -> bytes:
    return f"# {path} (asked for {client})\nconfigfile /grub/grub.cfg\n".encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    log_file = ""
    lock = threading.Lock()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _record(self) -> str | None:
        client = self.headers.get(CLIENT_HEADER)
        with self.lock, open(self.log_file, "a") as f:
            f.write(json.dumps({"path": self.path, "client": client,
                                "peer": self.client_address[0]}) + "\n")
        return client

    def _send(self, status: int, body: bytes, kind: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        client = self._record()
        parts = self.path.split("/")
        if parts[1:2] != ["grub"]:
            self._send(404, b"not a GRUB page\n")
        elif len(parts) == 3:
            self._machine(parts[2], client)
        else:
            self._send(200, grub_page(self.path, client))

    def _machine(self, mac: str, client: str | None) -> None:
        if mac == NOT_FOUND_MAC:
            self._send(404, json.dumps({"title": "unknown machine",
                                        "description": f"no machine {mac}"}).encode(),
                       "application/json")
        elif mac == BROKEN_MAC:
            self._send(500, b"template error: grub.tmpl line 3\n")
        elif mac == SLOW_MAC:
            time.sleep(SLOW_SECONDS)
            self._send(200, grub_config(mac, client))
        elif mac == HUGE_MAC:
            # Chunked, no length: the bound has to be found while reading.
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"#" * 65536
            try:
                for _ in range(HUGE_SIZE // len(chunk)):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass  # tftpd stopped reading: what it should do
        else:
            self._send(200, grub_config(mac, client))


def main() -> int:
    address, port, log_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    Handler.log_file = log_file
    server = ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
