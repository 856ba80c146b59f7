"""Images through the app: Content-Length, HEAD, Range, ETag, 304, events (TestClient).

The same behaviour over real sockets, with gunicorn's sendfile and curl, is in
test_httpd_gunicorn.py.
"""

from __future__ import annotations

import hashlib

import pytest

from httpd_support import INITRD, IP, KERNEL, MAC, Client
from httpd_fakes import FakeStore

from astralboot.services.httpd.images import Span, matches, parse_range

TAG = f'"{hashlib.sha256(INITRD).hexdigest()}"'
URL = "/image/debian/initrd.gz"


def test_whole_image_with_length_and_strong_etag(client: Client) -> None:
    r = client.simulate_get(URL)
    assert r.status_code == 200
    assert r.content == INITRD
    assert r.headers["content-length"] == str(len(INITRD))
    assert r.headers["etag"] == TAG
    assert r.headers["accept-ranges"] == "bytes"


def test_head_has_the_headers_and_no_body(client: Client) -> None:
    r = client.simulate_head(URL)
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-length"] == str(len(INITRD))
    assert r.headers["etag"] == TAG


def test_range_gives_206_with_exactly_those_bytes(client: Client) -> None:
    r = client.simulate_get(URL, headers={"Range": "bytes=100-199"})
    assert r.status_code == 206
    assert r.content == INITRD[100:200]
    assert r.headers["content-length"] == "100"
    assert r.headers["content-range"] == f"bytes 100-199/{len(INITRD)}"


def test_open_and_suffix_ranges(client: Client) -> None:
    r = client.simulate_get(URL, headers={"Range": f"bytes={len(INITRD) - 10}-"})
    assert (r.status_code, r.content) == (206, INITRD[-10:])
    r = client.simulate_get(URL, headers={"Range": "bytes=-5"})
    assert (r.status_code, r.content) == (206, INITRD[-5:])


def test_range_past_the_end_is_416(client: Client) -> None:
    r = client.simulate_get(URL, headers={"Range": f"bytes={len(INITRD)}-"})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{len(INITRD)}"


def test_if_none_match_with_the_current_etag_is_304(client: Client) -> None:
    r = client.simulate_get(URL, headers={"If-None-Match": TAG})
    assert r.status_code == 304
    assert r.content == b""
    r = client.simulate_get(URL, headers={"If-None-Match": '"0000"'})
    assert r.status_code == 200


def test_if_range_with_an_old_etag_sends_the_whole_new_file(client: Client) -> None:
    r = client.simulate_get(URL, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert r.status_code == 200 and r.content == INITRD
    r = client.simulate_get(URL, headers={"Range": "bytes=0-9", "If-Range": TAG})
    assert r.status_code == 206 and r.content == INITRD[:10]


def test_missing_image_is_404(client: Client) -> None:
    assert client.simulate_get("/image/debian/nothing-here").status_code == 404
    assert client.simulate_get("/image/debian").status_code == 404


def test_tftp_folder_is_served_too(client: Client) -> None:
    assert client.simulate_get("/tftp/undionly.kpxe").content == b"fake kpxe"


def test_each_download_is_a_boot_event_for_the_leaseholder(client: Client,
                                                           fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP)
    client.simulate_get("/image/debian/linux")
    client.simulate_get(URL)
    client.simulate_head(URL)                                   # no body: no event
    client.simulate_get(URL, headers={"Range": "bytes=10-20"})  # a resumed piece: no event
    assert [(e.stage, e.mac, e.detail) for e in fake.reported] == [
        ("http.image", MAC, "boot/debian/images/linux"),
        ("http.image", MAC, "boot/debian/images/initrd.gz")]


def test_downloads_cost_the_store_no_lookups(client: Client, fake: FakeStore) -> None:
    # The event carries the address; the store that owns the leases names
    # the machine, so a download costs no request to the store for it.
    fake.add_machine(MAC, ip=IP)
    for _ in range(5):
        client.simulate_get("/image/debian/linux")
    client.app.reporter.flush()
    assert "lease.lookup" not in fake.calls
    assert [(e.mac, e.ip) for e in fake.sent] == [(None, IP)]  # repeats inside 1 s: one


def test_a_client_repeating_itself_is_one_event_per_second(client: Client,
                                                           fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP)
    now = [1000.0]
    client.app.reporter.clock = lambda: now[0]
    for _ in range(50):  # a script stuck in a loop
        client.simulate_get("/image/debian/linux")
    now[0] += 1.5
    client.simulate_get("/image/debian/linux")
    assert len(fake.reported) == 2
    assert client.app.reporter.stats["events_repeated"] == 49


def test_downloads_from_unknown_addresses_are_served_without_an_event(client: Client,
                                                                      fake: FakeStore) -> None:
    r = client.simulate_get("/image/debian/linux", remote_addr="198.18.0.9")
    assert r.content == KERNEL
    client.app.reporter.flush()
    assert fake.reported == []
    # httpd never asked whose address it was: the event names only the address.
    assert [(e.mac, e.ip) for e in fake.sent] == [(None, "198.18.0.9")]
    assert "lease.lookup" not in fake.calls


@pytest.mark.parametrize("header,size,expected", [
    (None, 10, Span(200, 0, 9)),
    ("bytes=0-0", 10, Span(206, 0, 0)),
    ("bytes=5-100", 10, Span(206, 5, 9)),
    ("bytes=-3", 10, Span(206, 7, 9)),
    ("bytes=-30", 10, Span(206, 0, 9)),
    ("bytes=10-", 10, Span(416)),
    ("bytes=-0", 10, Span(416)),
    ("bytes=0-1,3-4", 10, Span(200, 0, 9)),   # several ranges: whole file
    ("items=0-1", 10, Span(200, 0, 9)),
    ("bytes=5-2", 10, Span(200, 0, 9)),
    ("bytes=x-y", 10, Span(200, 0, 9)),
    ("bytes=0-", 0, Span(416)),
])
def test_parse_range(header: str | None, size: int, expected: Span) -> None:
    assert parse_range(header, size) == expected


def test_etag_matching() -> None:
    assert matches('"a", "b"', '"b"')
    assert matches("*", '"b"')
    assert matches('W/"b"', '"b"')
    assert not matches('"a"', '"b"')
    assert not matches(None, '"b"')
