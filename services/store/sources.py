"""Where boot content comes from: the local data folder, or a root CID in IPFS.

Both present the original layout (``boot/<os>/...``, ``tftp/``, ``bin/``)
under paths relative to the content root. Only those top-level folders
are visible, so the database file that lives in the data folder by default
is never served. Every call blocks; the store runs them in worker threads.
"""

from __future__ import annotations

import logging
import os
import stat as statmod
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

from astralboot.common.errors import AstralBootError

log = logging.getLogger(__name__)

CONTENT_ROOTS = ("bin", "boot", "tftp")
READ_CHUNK = 1 << 20


class SourceError(AstralBootError):
    """A content source (data folder, IPFS) could not give what was asked; one bus code each."""


class BadPath(SourceError):
    """A path that could leave the content root (→ bad_request)."""


class ContentMissing(SourceError):
    """No such file or folder under the root (→ not_found)."""


class ContentUnavailable(SourceError):
    """The backend cannot answer now: daemon down, slow, block missing (→ unavailable)."""


def clean_path(path: str) -> str:
    """``boot//debian/./x`` → ``boot/debian/x``; absolute paths, ``..`` and NUL are refused."""
    if "\x00" in path or "\\" in path:
        raise BadPath(f"{path!r}: NUL and backslash are not allowed in paths")
    if path.startswith("/"):
        raise BadPath(f"{path!r}: paths are relative to the content root")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BadPath(f"{path!r}: '..' is not allowed in paths")
    return "/".join(parts)


def _visible(path: str) -> None:
    if path and path.split("/", 1)[0] not in CONTENT_ROOTS:
        raise ContentMissing(f"{path}: not found (content lives under {', '.join(CONTENT_ROOTS)})")


@dataclass(frozen=True, slots=True)
class Node:
    """A file or folder as the backend sees it now.

    ``version`` names these exact bytes: the CID in IPFS, or size, mtime and
    inode of a local file (an edited template gets a new version).
    """

    path: str
    is_dir: bool
    size: int
    version: Any


class Source(Protocol):
    description: str
    persistent_versions: bool  # a version's digest may be remembered across restarts

    def stat(self, path: str) -> Node: ...
    def known(self, path: str) -> Node | None: ...
    def list(self, path: str) -> list[Node]: ...
    def open(self, node: Node) -> Iterator[bytes]: ...


class LocalFolder:
    """The data folder on this host."""

    persistent_versions = False

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.description = f"folder {self.root}"

    def _inside(self, path: str) -> str:
        """The real file behind ``path``, refused if a link takes it out of the folder.

        Links inside the data folder are fine (operators link images between
        OS folders); one that resolves elsewhere (``tftp/x -> /etc/passwd``)
        is treated as missing, so nothing outside is ever served or revealed.
        """
        root = os.path.realpath(self.root)
        real = os.path.realpath(self.root / path)
        if real != root and not real.startswith(root + os.sep):
            log.warning("refusing %s: it resolves to %s, outside %s", path, real, root)
            raise ContentMissing(f"{path}: not found")
        return real

    def _node(self, path: str, st: os.stat_result) -> Node:
        if statmod.S_ISDIR(st.st_mode):
            return Node(path, True, 0, None)
        if not statmod.S_ISREG(st.st_mode):
            raise ContentMissing(f"{path}: not a regular file")
        return Node(path, False, st.st_size, (path, st.st_size, st.st_mtime_ns, st.st_ino))

    def stat(self, path: str) -> Node:
        _visible(path)
        try:
            return self._node(path, os.stat(self._inside(path)))
        except (FileNotFoundError, NotADirectoryError):
            raise ContentMissing(f"{path}: not found") from None
        except PermissionError:
            raise ContentUnavailable(f"{path}: permission denied") from None

    def known(self, path: str) -> Node | None:
        return self.stat(path)  # a stat is cheap enough for the event loop

    def list(self, path: str) -> list[Node]:
        _visible(path)
        out = []
        try:
            with os.scandir(self._inside(path)) as it:
                for entry in it:
                    child = f"{path}/{entry.name}" if path else entry.name
                    if not path and entry.name not in CONTENT_ROOTS:
                        continue
                    try:
                        if entry.is_symlink():
                            self._inside(child)
                        out.append(self._node(child, entry.stat()))
                    except (OSError, ContentMissing):
                        continue  # vanished, dangling link, socket...
        except (FileNotFoundError, NotADirectoryError):
            raise ContentMissing(f"{path or '/'}: no such folder") from None
        except PermissionError:
            raise ContentUnavailable(f"{path}: permission denied") from None
        return sorted(out, key=lambda n: n.path)

    def open(self, node: Node) -> Iterator[bytes]:
        try:
            f = open(self._inside(node.path), "rb")
        except FileNotFoundError:
            raise ContentMissing(f"{node.path}: not found") from None
        with f:
            while block := f.read(READ_CHUNK):
                yield block


# ipfshttpclient passes an argument urllib3 deprecates; the warning is noise.
warnings.filterwarnings("ignore", message=".*'strict' parameter is no longer needed.*")

_MISSING_HINTS = ("does not exist", "no link named", "not found", "no such file")


class IpfsFolder:
    """Paths under one root CID, through an IPFS daemon's HTTP RPC API.

    Only calls that Kubo and js-ipfs share are used (files/stat, ls, cat).
    Everything under an immutable root is immutable, so what a path resolves
    to is remembered for good.
    """

    persistent_versions = True

    def __init__(self, api: str, root: str | None, timeout: float) -> None:
        self.api = api
        self.root = root
        self.timeout = timeout
        self.description = f"IPFS {root or '(no root)'} via {api}"
        self._local = threading.local()
        self._nodes: dict[str, Node] = {}
        self._lists: dict[str, list[Node]] = {}

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            import ipfshttpclient  # slow to import; only when IPFS is in use
            client = ipfshttpclient.Client(self.api, timeout=self.timeout)
            self._local.client = client
        return client

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import ipfshttpclient.exceptions as ipfs_errors
        if self.root is None:
            raise ContentUnavailable("no IPFS root: run `astralboot publish` to write refs.toml")
        try:
            return fn(*args, **kwargs)
        except ipfs_errors.ErrorResponse as exc:
            message = str(exc)
            if any(hint in message.lower() for hint in _MISSING_HINTS):
                raise ContentMissing(f"{what}: not found in {self.root}") from None
            raise ContentUnavailable(f"{what}: IPFS daemon error: {message}") from None
        except ipfs_errors.TimeoutError:
            raise ContentUnavailable(f"{what}: IPFS daemon at {self.api} did not answer "
                                     f"within {self.timeout:g}s") from None
        except ipfs_errors.Error as exc:
            raise ContentUnavailable(f"{what}: IPFS daemon at {self.api}: "
                                     f"{exc.__class__.__name__}: {exc}") from None

    def _ipfs_path(self, path: str) -> str:
        return f"/ipfs/{self.root}/{path}" if path else f"/ipfs/{self.root}"

    def stat(self, path: str) -> Node:
        _visible(path)
        node = self._nodes.get(path)
        if node is None:
            info = self._call(path or "/", lambda: self._client().files.stat(self._ipfs_path(path)))
            is_dir = info["Type"] == "directory"
            node = Node(path, is_dir, 0 if is_dir else int(info["Size"]),
                        None if is_dir else f"ipfs:{info['Hash']}")
            self._nodes[path] = node
        return node

    def known(self, path: str) -> Node | None:
        _visible(path)
        return self._nodes.get(path)

    def list(self, path: str) -> list[Node]:
        _visible(path)
        found = self._lists.get(path)
        if found is None:
            if path and self.stat(path).is_dir is False:
                raise ContentMissing(f"{path}: not a folder")
            listing = self._call(path or "/", lambda: self._client().ls(self._ipfs_path(path)))
            found = []
            for link in listing["Objects"][0]["Links"]:
                name = link["Name"]
                if not path and name not in CONTENT_ROOTS:
                    continue
                child = f"{path}/{name}" if path else name
                is_dir = link["Type"] == 1
                node = Node(child, is_dir, 0 if is_dir else int(link["Size"]),
                            None if is_dir else f"ipfs:{link['Hash']}")
                self._nodes.setdefault(child, node)
                found.append(node)
            found.sort(key=lambda n: n.path)
            self._lists[path] = found
        return found

    def open(self, node: Node) -> Iterator[bytes]:
        cid = str(node.version).removeprefix("ipfs:")
        stream = self._call(node.path, lambda: self._client().cat(cid, stream=True))
        iterator = iter(stream)
        try:
            while True:
                try:
                    block = self._call(node.path, next, iterator, None)
                except SourceError:
                    raise
                except Exception as exc:  # urllib3/requests errors surface raw mid-stream
                    raise ContentUnavailable(f"{node.path}: IPFS stream broke: {exc}") from None
                if block is None:
                    return
                yield block
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
