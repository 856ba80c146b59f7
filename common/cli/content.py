"""``astralboot publish`` and ``astralboot precache``.

``publish`` adds the data folder's content (``boot/``, ``tftp/``, ``bin/``)
to the IPFS daemon at ``ipfs.api`` and writes the root CID to refs.toml
beside config.toml, where ``serve`` (the store) finds it. ``precache`` asks
the running store for every file under the content root, so that each one
is fetched, verified and cached before the first machine boots (what
``ipfs refs -r`` did for the original server), with a progress bar.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from astralboot.common.errors import AstralBootError, RemoteError

CONTENT_ROOTS = ("bin", "boot", "tftp")  # what the store serves (services/store/sources.py)
_BOOT_LINE = re.compile(r"^\s*boot\s*=.*$", re.MULTILINE)


class PublishError(AstralBootError):
    """The data folder could not be added to IPFS."""


def add_publish_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DIR",
                   help="folder to publish (default: the config's data folder)")
    p.add_argument("--api", metavar="MULTIADDR",
                   help="IPFS API address (default: the config's ipfs.api)")
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="seconds the whole upload may take (default 3600)")


def add_precache_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", default="",
                   help="only this folder under the content root (default: everything)")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds to wait for any one file (default 1800)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def write_refs(refs_path: Path, cid: str) -> None:
    """Set ``boot = "<cid>"`` in refs.toml, keeping whatever else it says."""
    line = f'boot = "{cid}"'
    try:
        text = refs_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = "# IPFS roots written by `astralboot publish`.\n"
    if _BOOT_LINE.search(text):
        text = _BOOT_LINE.sub(line, text, count=1)
    else:
        text = text.rstrip("\n") + "\n" + line + "\n"
    temp = refs_path.with_name(f".{refs_path.name}.tmp")
    temp.write_text(text, encoding="utf-8")
    temp.replace(refs_path)


def cmd_publish(args: argparse.Namespace) -> int:
    from astralboot.common.config import load

    config = load(args.config)
    folder = Path(args.data).absolute() if args.data else config.data
    present = [name for name in CONTENT_ROOTS if (folder / name).is_dir()]
    if not present:
        raise PublishError(f"{folder} has none of {', '.join(CONTENT_ROOTS)}: nothing to publish")
    api = args.api or config.ipfs.api
    import ipfshttpclient
    import ipfshttpclient.exceptions as ipfs_errors

    client = ipfshttpclient.Client(api, timeout=args.timeout)
    started = time.monotonic()
    try:
        added = client.add(str(folder), recursive=True,
                           pattern=[f"{name}/**" for name in present])
    except ipfs_errors.Error as exc:
        raise PublishError(f"IPFS daemon at {api}: {exc}") from None
    finally:
        client.close()
    roots = [entry for entry in added if entry["Name"] == folder.name]
    if not roots:
        raise PublishError(f"IPFS at {api} did not return a root for {folder}")
    cid = roots[-1]["Hash"]
    write_refs(config.refs_path, cid)
    print(f"published {folder} ({', '.join(present)}; {len(added) - 1} entries) as {cid} "
          f"in {time.monotonic() - started:.1f}s")
    print(f"wrote {config.refs_path}")
    if not config.ipfs.enabled:
        print("note: [ipfs] enabled = false in config.toml; set it to true to serve from IPFS")
    return 0


def cmd_precache(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from astralboot.common.bus.client import SyncBusClient
    from astralboot.common.bus.security import client_curve
    from astralboot.common.config import load
    from astralboot.common.messages import ContentEntry, ContentList, ContentListReply, ContentStat

    config = load(args.config)
    bus = SyncBusClient(config.bus.endpoint, deadline=config.bus.deadline + config.ipfs.timeout,
                        curve=client_curve(config, "admin"))

    def listing(path: str) -> list[ContentEntry]:
        reply = bus.call(ContentList(path=path))
        assert isinstance(reply, ContentListReply)
        return list(reply.entries)

    files: list[ContentEntry] = []
    pending = [args.path.strip("/")]
    while pending:
        for entry in listing(pending.pop()):
            if entry.is_dir:
                pending.append(entry.path)
            else:
                files.append(entry)
    total = sum(f.size for f in files)
    failed: list[str] = []
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="precache",
              disable=args.no_progress, file=sys.stderr) as bar:
        for entry in files:
            bar.set_postfix_str(entry.path[-40:], refresh=False)
            deadline = time.monotonic() + args.timeout
            while True:
                try:
                    bus.call(ContentStat(path=entry.path))
                    break
                except RemoteError as exc:
                    # "unavailable" while the store is still fetching: ask again.
                    if exc.code.value != "unavailable" or time.monotonic() > deadline:
                        failed.append(f"{entry.path}: {exc}")
                        break
                    time.sleep(0.5)
            bar.update(entry.size)
    bus.close()
    done = len(files) - len(failed)
    print(f"precached {done} of {len(files)} files ({total / (1 << 20):.1f} MiB) "
          f"into the store's cache {config.store.cache}")
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    return 1 if failed else 0
