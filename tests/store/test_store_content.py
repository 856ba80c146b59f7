"""Content from the local data folder, the verified digest cache, remote streaming."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from astralboot.common.bus.client import AsyncBusClient, SyncBusClient
from astralboot.common.content import (BadDigest, DigestCache, DigestMismatch, fetch_to_cache,
                                       fetch_to_cache_async)
from astralboot.common.messages import (ContentDataReply, ContentEntry, ContentList,
                                        ContentListReply, ContentRead, ContentStat,
                                        ContentStatReply, ErrorReply, Health, HealthReply)

from store_lab import StoreLab, write_store_config


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def store() -> Iterator[StoreLab]:
    """A store on SQLite whose database file sits in the data folder (as by default)."""
    folder = Path(tempfile.mkdtemp(prefix="ab-c-"))
    try:
        db = f"sqlite:///{folder / 'data' / 'astralboot.db'}"
        with StoreLab(folder, write_store_config(folder, db)) as lab:
            yield lab
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def stat(store: StoreLab, path: str) -> ContentEntry:
    reply = store.call(ContentStat(path=path))
    assert isinstance(reply, ContentStatReply), reply
    return reply.entry


def code(reply: object) -> str | None:
    return reply.code if isinstance(reply, ErrorReply) else None


def test_a_file_is_verified_in_the_cache_when_the_reply_comes(store: StoreLab) -> None:
    source = store.config.data / "boot" / "debian" / "images" / "linux"
    entry = stat(store, "boot/debian/images/linux")
    assert (entry.path, entry.is_dir, entry.size) == ("boot/debian/images/linux", False,
                                                      source.stat().st_size)
    assert entry.digest == sha256(source)
    cached = store.config.store.cache / entry.digest
    assert cached.read_bytes() == source.read_bytes()
    # Asked again: the same answer (from memory, no copy).
    assert stat(store, "boot//debian/./images/linux/") == entry


def test_folders_and_listings(store: StoreLab) -> None:
    assert stat(store, "boot/debian").is_dir
    root = store.call(ContentList(path=""))
    assert isinstance(root, ContentListReply)
    # Only the content folders: the database beside them is never served.
    assert [e.path for e in root.entries] == ["bin", "boot", "tftp"]
    debian = store.call(ContentList(path="boot/debian"))
    assert isinstance(debian, ContentListReply)
    assert [(e.path, e.is_dir) for e in debian.entries] == [
        ("boot/debian/classes.toml", False), ("boot/debian/images", True),
        ("boot/debian/template", True)]
    classes = debian.entries[0]
    assert classes.size == (store.config.data / "boot/debian/classes.toml").stat().st_size


@pytest.mark.parametrize("path,expected", [
    ("../etc/passwd", "bad_request"),
    ("/etc/passwd", "bad_request"),
    ("boot/../../etc/passwd", "bad_request"),
    ("boot/debian\x00.tmpl", "bad_request"),
    ("boot\\debian", "bad_request"),
    ("astralboot.db", "not_found"),
    ("boot/nothere", "not_found"),
    ("tftp/undionly.kpxe/inside", "not_found"),
])
def test_paths_are_checked(store: StoreLab, path: str, expected: str) -> None:
    assert code(store.call(ContentStat(path=path))) == expected
    assert code(store.call(ContentList(path=path))) in (expected, "not_found")


def test_links_inside_the_folder_are_followed_links_out_of_it_are_not(store: StoreLab,
                                                                      short_tmp: Path) -> None:
    tftp = store.config.data / "tftp"
    secret = short_tmp / "secret.txt"
    secret.write_text("not for the boot network\n")
    (tftp / "escape").symlink_to(secret)
    (tftp / "escape-dir").symlink_to(short_tmp, target_is_directory=True)
    (tftp / "same-kernel").symlink_to(store.config.data / "boot" / "debian" / "images" / "linux")
    try:
        for path in ("tftp/escape", "tftp/escape-dir/secret.txt"):
            assert code(store.call(ContentStat(path=path))) == "not_found"
        assert code(store.call(ContentList(path="tftp/escape-dir"))) == "not_found"
        listing = store.call(ContentList(path="tftp"))
        assert isinstance(listing, ContentListReply)
        names = {e.path for e in listing.entries}
        assert "tftp/same-kernel" in names and not names & {"tftp/escape", "tftp/escape-dir"}
        inside = stat(store, "tftp/same-kernel")
        assert inside.digest == sha256(store.config.data / "boot" / "debian" / "images" / "linux")
    finally:
        for name in ("escape", "escape-dir", "same-kernel"):
            (tftp / name).unlink()


def test_an_edited_template_is_served_fresh(store: StoreLab) -> None:
    template = store.config.data / "boot" / "debian" / "template" / "start.tmpl"
    before = stat(store, "boot/debian/template/start.tmpl")
    template.write_text("#!ipxe\necho edited {{ name }}\n")
    after = stat(store, "boot/debian/template/start.tmpl")
    assert after.digest != before.digest and after.digest == sha256(template)
    assert (store.config.store.cache / after.digest).read_bytes() == template.read_bytes()


def _health(store: StoreLab) -> dict[str, object]:
    reply = store.call(Health())
    assert isinstance(reply, HealthReply)
    return dict(reply.details)


def test_a_corrupted_cache_file_is_detected_and_fetched_again(store: StoreLab) -> None:
    entry = stat(store, "tftp/undionly.kpxe")
    assert entry.digest is not None
    cached = store.config.store.cache / entry.digest
    good = cached.read_bytes()
    corrupt_before = _health(store)["content.corrupt"]
    with open(cached, "r+b") as f:  # flip bytes in place: same size, same name
        f.seek(1000)
        f.write(bytes(b ^ 0xFF for b in good[1000:1010]))
    again = stat(store, "tftp/undionly.kpxe")
    assert again == entry
    assert cached.read_bytes() == good
    assert _health(store)["content.corrupt"] == corrupt_before + 1  # type: ignore[operator]
    # A read of a corrupted file is caught the same way.
    with open(cached, "r+b") as f:
        f.write(b"garbage!")
    data = store.call(ContentRead(digest=entry.digest, offset=0, length=16))
    assert isinstance(data, ContentDataReply) and data.data == good[:16]
    # And a deleted one comes back.
    cached.unlink()
    assert stat(store, "tftp/undionly.kpxe") == entry and cached.read_bytes() == good


def test_reads_stream_a_file_to_a_front_end_on_another_host(store: StoreLab,
                                                           short_tmp: Path) -> None:
    entry = stat(store, "boot/debian/images/linux")
    source = (store.config.data / entry.path).read_bytes()
    remote = DigestCache(short_tmp / "remote-cache")
    with SyncBusClient(store.config.bus.endpoint) as bus:
        path = fetch_to_cache(bus, remote, entry)
    assert path == remote.path_for(entry.digest or "") and path.read_bytes() == source
    assert remote.lookup(entry.digest or "", entry.size) == path

    other = DigestCache(short_tmp / "async-cache")

    async def fetch() -> Path:
        async with AsyncBusClient(store.config.bus.endpoint) as bus:
            return await fetch_to_cache_async(bus, other, entry)
    assert asyncio.run(fetch()).read_bytes() == source
    assert not [p for p in (short_tmp / "async-cache").iterdir() if p.name.startswith(".tmp")]


def test_read_ranges_and_their_limits(store: StoreLab) -> None:
    entry = stat(store, "tftp/undionly.kpxe")
    digest = entry.digest or ""
    source = (store.config.data / entry.path).read_bytes()
    tail = store.call(ContentRead(digest=digest, offset=entry.size - 10, length=100))
    assert isinstance(tail, ContentDataReply)
    assert (tail.data, tail.size, tail.offset) == (source[-10:], entry.size, entry.size - 10)
    end = store.call(ContentRead(digest=digest, offset=entry.size, length=100))
    assert isinstance(end, ContentDataReply) and end.data == b""
    assert code(store.call(ContentRead(digest=digest, offset=entry.size + 1))) == "bad_request"
    assert code(store.call(ContentRead(digest=digest, length=(4 << 20) + 1))) == "bad_request"
    assert code(store.call(ContentRead(digest="xyz"))) == "bad_request"
    assert code(store.call(ContentRead(digest="0" * 64))) == "not_found"


# -- the cache itself (no store needed) --------------------------------------------


def test_cache_writes_only_verified_files(short_tmp: Path) -> None:
    cache = DigestCache(short_tmp / "cache")
    data = os.urandom(300_000)
    digest = hashlib.sha256(data).hexdigest()
    with pytest.raises(DigestMismatch):
        cache.write(digest, [data[:1000], b"not the same"])
    assert not list((short_tmp / "cache").iterdir())  # nothing left behind
    assert cache.lookup(digest, len(data)) is None
    path = cache.write(digest, [data[:1000], data[1000:]])
    assert path.read_bytes() == data and cache.lookup(digest, len(data)) == path
    assert cache.lookup(digest, len(data) + 1) is None  # wrong size: not sane
    added_digest, size, added = cache.add(iter([b"abc", b"def"]))
    assert (added_digest, size) == (hashlib.sha256(b"abcdef").hexdigest(), 6)
    assert added.read_bytes() == b"abcdef"
    with pytest.raises(BadDigest):
        cache.path_for("../../etc/passwd")
    # verify() drops a file whose bytes went bad.
    path.write_bytes(b"x" * len(data))
    assert not cache.verify(digest) and not path.exists()


def test_a_failing_source_leaves_nothing_behind(short_tmp: Path) -> None:
    cache = DigestCache(short_tmp / "cache")

    def broken() -> Iterator[bytes]:
        yield b"partial"
        raise OSError("connection reset")

    with pytest.raises(OSError):
        cache.add(broken())
    assert not list((short_tmp / "cache").iterdir())


def test_a_bounded_cache_removes_what_was_used_least_recently(short_tmp: Path) -> None:
    root = short_tmp / "cache"
    cache = DigestCache(root, max_bytes=250_000)
    digests = [cache.add(iter([os.urandom(100_000)]))[0] for _ in range(2)]
    old, used = digests
    (root / "refs").mkdir()  # the store's own folder: never a candidate
    (root / "refs" / "x").write_text("kept")
    long_ago = os.stat(root / old).st_mtime_ns - 3600 * 10**9
    for digest in digests:  # both last used an hour ago ...
        os.utime(root / digest, ns=(long_ago, os.stat(root / digest).st_mtime_ns))
    mtime = os.stat(root / used).st_mtime_ns
    assert cache.lookup(used, 100_000) == root / used  # ... then one is used again
    assert os.stat(root / used).st_mtime_ns == mtime  # use never changes the mtime

    new, _, _ = cache.add(iter([os.urandom(100_000)]))  # 300,000 bytes: over the bound
    assert not (root / old).exists()
    assert (root / used).exists() and (root / new).exists()
    assert (root / "refs" / "x").read_text() == "kept"
    assert (cache.evicted, cache.evicted_bytes) == (1, 100_000)

    # The file just added stays even when it alone is over the bound.
    big, _, path = DigestCache(root, max_bytes=50_000).add(iter([os.urandom(60_000)]))
    assert path.exists() and [p.name for p in root.iterdir() if p.is_file()] == [big]


def test_an_unbounded_cache_keeps_everything(short_tmp: Path) -> None:
    cache = DigestCache(short_tmp / "cache")
    for _ in range(5):
        cache.add(iter([os.urandom(50_000)]))
    assert len(list((short_tmp / "cache").iterdir())) == 5 and cache.evicted == 0


def test_a_store_with_a_bounded_cache_fetches_an_evicted_file_again(short_tmp: Path) -> None:
    # Room for the 3 MB kernel or for the small files, not for both.
    config = write_store_config(short_tmp, f"sqlite:///{short_tmp / 'leases.db'}",
                                extra={"store.cache_max": "3100K"})
    with StoreLab(short_tmp, config) as lab:
        cache = lab.config.store.cache
        kernel = stat(lab, "boot/debian/images/linux")
        boot = stat(lab, "tftp/undionly.kpxe")
        tool = stat(lab, "bin/tool")
        assert kernel.digest and boot.digest and tool.digest
        assert not (cache / kernel.digest).exists()  # least recently used: gone
        assert sum(p.stat().st_size for p in cache.iterdir() if p.is_file()) <= 3100 << 10

        # Asked for again, it comes back whole from the data folder.
        source = (lab.config.data / "boot/debian/images/linux").read_bytes()
        assert stat(lab, "boot/debian/images/linux") == kernel
        assert (cache / kernel.digest).read_bytes() == source
        # And a front end on another host can still stream any of them.
        data = lab.call(ContentRead(digest=boot.digest, offset=0, length=boot.size))
        assert isinstance(data, ContentDataReply)
        assert data.data == (lab.config.data / "tftp/undionly.kpxe").read_bytes()

        health = lab.call(Health())
        assert isinstance(health, HealthReply)
        details = dict(health.details)
        assert details["content.cache_max"] == 3100 << 10
        assert details["content.evicted"] >= 2  # the kernel, then the small files
