"""Content from a real IPFS daemon (js-ipfs), `astralboot publish` and `precache`."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

from astralboot.common.bus.client import AsyncBusClient
from astralboot.common.config import load
from support.stack import astralboot_argv
from astralboot.common.messages import (ContentList, ContentListReply, ContentStat,
                                        ContentStatReply, ErrorReply, Health, HealthReply,
                                        LeaseCommit, LeaseGrant, LeaseOffer)

from jsipfs import IpfsNode
from store_lab import StoreLab, write_store_config

TIMEOUT = 3.0  # ipfs.timeout in these tests
FILES = ("bin/tool", "boot/debian/classes.toml", "boot/debian/images/linux",
         "boot/debian/template/start.tmpl", "tftp/undionly.kpxe")


def ipfs_config(folder: Path, node: IpfsNode) -> Path:
    config = write_store_config(folder, f"sqlite:///{folder / 'db' / 'astralboot.db'}",
                                extra={"ipfs.enabled": True, "ipfs.api": node.api,
                                       "ipfs.timeout": TIMEOUT})
    (folder / "data" / "astralboot.db").write_bytes(b"not for publishing")
    return config


def cli(config: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(astralboot_argv(*args, "-c", str(config)), capture_output=True,
                          text=True, timeout=timeout)


def publish(config: Path) -> str:
    done = cli(config, "publish")
    assert done.returncode == 0, done.stderr
    refs = tomllib.loads((config.parent / "refs.toml").read_text())
    assert done.stdout.startswith("published ") and refs["boot"] in done.stdout
    return refs["boot"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stat(store: StoreLab, path: str) -> ContentStatReply | ErrorReply:
    reply = store.call(ContentStat(path=path), deadline=TIMEOUT + 10)
    assert isinstance(reply, (ContentStatReply, ErrorReply))
    return reply


def test_publish_writes_refs_and_the_store_serves_from_ipfs(ipfs_node: IpfsNode,
                                                          short_tmp: Path) -> None:
    config = ipfs_config(short_tmp, ipfs_node)
    (short_tmp / "refs.toml").write_text('# kept\nrocket = "x"\n')
    cid = publish(config)
    assert load(config).ipfs.root == cid
    assert 'rocket = "x"' in (short_tmp / "refs.toml").read_text()  # other refs kept
    # Prove the bytes come from IPFS: the local folder goes away.
    original = short_tmp / "data"
    moved = short_tmp / "published"
    original.rename(moved)
    original.mkdir()
    with StoreLab(short_tmp, config) as store:
        root = store.call(ContentList(path=""))
        assert isinstance(root, ContentListReply)
        assert [e.path for e in root.entries] == ["bin", "boot", "tftp"]  # no database
        for path in FILES:
            reply = stat(store, path)
            assert isinstance(reply, ContentStatReply), reply
            assert reply.entry.digest == sha256(moved / path)
            assert reply.entry.size == (moved / path).stat().st_size
            cached = store.config.store.cache / reply.entry.digest
            assert cached.read_bytes() == (moved / path).read_bytes()
        images = store.call(ContentList(path="boot/debian/images"))
        assert isinstance(images, ContentListReply)
        assert [(e.path, e.size) for e in images.entries] == [
            ("boot/debian/images/linux", (moved / "boot/debian/images/linux").stat().st_size)]
        missing = stat(store, "boot/debian/images/initrd.gz")
        assert isinstance(missing, ErrorReply) and missing.code == "not_found"
        health = store.call(Health())
        assert isinstance(health, HealthReply) and cid in str(health.details["content"])


def test_precache_fetches_everything_with_a_progress_bar(ipfs_node: IpfsNode,
                                                         short_tmp: Path) -> None:
    config = ipfs_config(short_tmp, ipfs_node)
    publish(config)
    with StoreLab(short_tmp, config) as store:
        done = cli(config, "precache")
        assert done.returncode == 0, done.stderr
        assert f"precached {len(FILES)} of {len(FILES)} files" in done.stdout
        assert "precache" in done.stderr and "100%" in done.stderr  # the tqdm bar
        cache = store.config.store.cache
        for path in FILES:
            assert (cache / sha256(short_tmp / "data" / path)).exists()
        fetched = store.call(Health())
        assert isinstance(fetched, HealthReply)
        assert fetched.details["content.fetched"] == len(FILES)

        # After a restart, what is cached is neither fetched nor trusted blindly:
        # it is verified once and served.
        store.restart()
        for path in FILES:
            assert isinstance(stat(store, path), ContentStatReply)
        health = store.call(Health())
        assert isinstance(health, HealthReply)
        assert health.details["content.fetched"] == 0
        assert health.details["content.verified"] == len(FILES)


def test_a_stopped_daemon_is_a_typed_error_within_the_deadline(short_tmp: Path) -> None:
    with IpfsNode(short_tmp / "ipfs") as node:
        config = ipfs_config(short_tmp, node)
        publish(config)
        with StoreLab(short_tmp, config) as store:
            assert isinstance(stat(store, "boot/debian/images/linux"), ContentStatReply)
            node.stop()
            started = time.monotonic()
            down = stat(store, "tftp/undionly.kpxe")
            assert isinstance(down, ErrorReply) and down.code == "unavailable"
            assert time.monotonic() - started < TIMEOUT + 2
            listing = store.call(ContentList(path="boot/debian/template"))
            assert isinstance(listing, ErrorReply) and listing.code == "unavailable"
            # What is already cached is still served without the daemon.
            assert isinstance(stat(store, "boot/debian/images/linux"), ContentStatReply)
            node.start()
            assert isinstance(stat(store, "tftp/undionly.kpxe"), ContentStatReply)


def test_a_missing_block_times_out_while_leases_keep_flowing(ipfs_node: IpfsNode,
                                                            short_tmp: Path) -> None:
    config = ipfs_config(short_tmp, ipfs_node)
    absent = ipfs_node.only_hash(secrets.token_bytes(64))  # a CID no node here has
    (short_tmp / "refs.toml").write_text(f'boot = "{absent}"\n')
    with StoreLab(short_tmp, config) as store:
        subnet = store.config.dhcp.local.name

        async def run() -> tuple[object, float, list[float]]:
            async with AsyncBusClient(store.config.bus.endpoint, deadline=TIMEOUT + 10) as bus:
                started = time.monotonic()
                content = asyncio.ensure_future(bus.request(ContentStat(
                    path="boot/debian/images/linux")))
                latencies = []
                macs = [f"02:00:00:00:11:{i:02x}" for i in range(20)]  # renewals, mostly
                while not content.done():
                    mac = macs[len(latencies) % len(macs)]
                    t = time.monotonic()
                    offered = await bus.call(LeaseOffer(mac=mac, subnet=subnet))
                    assert isinstance(offered, LeaseGrant)
                    bound = await bus.call(LeaseCommit(mac=mac, subnet=subnet,
                                                       ip=offered.ip, mode="select"))
                    assert isinstance(bound, LeaseGrant)
                    latencies.append(time.monotonic() - t)
                reply = await content
                return reply, time.monotonic() - started, latencies

        reply, waited, latencies = asyncio.run(run())
        assert isinstance(reply, ErrorReply) and reply.code == "unavailable"
        assert TIMEOUT - 0.5 <= waited < TIMEOUT + 2
        assert len(latencies) >= 5, "leases stalled while IPFS hung"
        assert max(latencies) < TIMEOUT, "a lease waited on the IPFS fetch"


def test_publish_fails_clearly_without_a_daemon(short_tmp: Path) -> None:
    from jsipfs import free_port
    config = write_store_config(short_tmp, f"sqlite:///{short_tmp / 'db.sqlite'}",
                                extra={"ipfs.api": f"/ip4/127.0.0.1/tcp/{free_port()}"})
    done = cli(config, "publish", timeout=60)
    assert done.returncode == 1
    assert "IPFS daemon at /ip4/127.0.0.1/tcp/" in done.stderr
    assert not (short_tmp / "refs.toml").exists()
    shutil.rmtree(short_tmp / "data")
    (short_tmp / "data").mkdir()
    empty = cli(config, "publish", timeout=60)
    assert empty.returncode == 1 and "nothing to publish" in empty.stderr
