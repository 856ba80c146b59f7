"""Boot images: filling a data folder from installed packages and from upstream.

Each OS folder says where its images come from in
``boot/<os>/images/sources.toml``:

```toml
[[image]]
name = "linux"                      # the file under boot/<os>/images/
package = "/usr/lib/.../linux"      # copied by `astralboot init` when installed
url = "https://.../linux"           # downloaded by `astralboot fetch <os>`
sha256 = "..."                      # pinned digest, or:
checksums = "https://.../SHA256SUMS"  # a checksum file (GNU, BSD, .treeinfo, DIGESTS)
checksums_name = "./netboot/.../linux"  # the entry in it (default: the URL's file name)
algorithm = "sha256"                # or sha512 (Flatcar's DIGESTS)

[[archive]]                         # a verified download images are taken out of
name = "netboot"
url = "https://.../netboot.tar.gz"
checksums = "https://.../SHA256SUMS"

[[image]]
name = "vmlinuz"
archive = "netboot"
member = "amd64/linux"

[[overlay]]                         # a tar.gz built from a folder of the OS (Alpine's apkovl)
name = "astralboot.apkovl.tar.gz"
folder = "overlay"
executable = ["etc/local.d/astralboot.start"]
links = { "etc/runlevels/default/local" = "/etc/init.d/local" }
```

:func:`populate` does the package part and copies the iPXE loaders from
Debian's ``ipxe`` package and, for Secure Boot machines, the signed shim and
GRUB from the netboot installer packages (``tftp/debian-installer/<arch>/``,
the folder GRUB's built-in prefix names); :func:`fetch` does the rest. Nothing unverified
is ever put in place: downloads go to a temporary file that is renamed only
after its digest matched.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tarfile
import tempfile
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from astralboot.common.errors import AstralBootError

IPXE = Path("/usr/lib/ipxe")
# loader → the data folders it belongs in (PXE ROMs use TFTP; UEFI HTTP boot uses /bin/)
IPXE_LOADERS = {"undionly.kpxe": ("tftp",), "ipxe.efi": ("tftp", "bin"),
                "snponly.efi": ("tftp", "bin")}
# Debian's signed shim and GRUB (netboot installer packages), per architecture.
NETBOOT = Path("/usr/lib/debian-installer/images/12")
SHIM_LOADERS = {"amd64": ("bootnetx64.efi", "grubx64.efi"),
                "arm64": ("bootnetaa64.efi", "grubaa64.efi")}
TIMEOUT = 60.0
CHUNK = 1 << 20

Progress = Callable[[str, int | None], Any]  # (label, total) → object with update(n), close()


class FetchError(AstralBootError):
    """An image could not be downloaded, verified or placed; names which and why."""


# --- the manifest -----------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    name: str
    package: str | None = None
    url: str | None = None
    sha256: str | None = None
    checksums: str | None = None
    checksums_name: str | None = None
    algorithm: str = "sha256"
    archive: str | None = None
    member: str | None = None


@dataclass(frozen=True)
class Overlay:
    name: str
    folder: str
    executable: tuple[str, ...] = ()
    links: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    os: str
    images: tuple[Source, ...]
    archives: dict[str, Source]
    overlays: tuple[Overlay, ...]


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def read_manifest(os_folder: Path) -> Manifest:
    path = os_folder / "images" / "sources.toml"
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FetchError(f"{path}: no images manifest for {os_folder.name}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise FetchError(f"{path}: {exc}") from None

    def source(entry: dict[str, Any], what: str) -> Source:
        known = set(Source.__dataclass_fields__)
        unknown = set(entry) - known
        if unknown:
            raise FetchError(f"{path}: {what}: unknown key(s) {', '.join(sorted(unknown))}")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise FetchError(f"{path}: {what}: name {name!r} is not a plain file name")
        try:
            return Source(**entry)
        except TypeError as exc:
            raise FetchError(f"{path}: {what}: {exc}") from None

    images = tuple(source(e, f"image[{i}]") for i, e in enumerate(raw.get("image", [])))
    archives = {s.name: s for s in (source(e, f"archive[{i}]")
                                    for i, e in enumerate(raw.get("archive", [])))}
    overlays = []
    for i, e in enumerate(raw.get("overlay", [])):
        try:
            overlays.append(Overlay(name=e["name"], folder=e["folder"],
                                    executable=tuple(e.get("executable", ())),
                                    links=dict(e.get("links", {}))))
        except (KeyError, TypeError) as exc:
            raise FetchError(f"{path}: overlay[{i}]: {exc}") from None
    for img in images:
        if img.archive is not None and img.archive not in archives:
            raise FetchError(f"{path}: image {img.name}: no [[archive]] named {img.archive!r}")
    return Manifest(os=os_folder.name, images=images, archives=archives,
                    overlays=tuple(overlays))


# --- from installed packages --------------------------------------------------------------

def _same(a: Path, b: Path) -> bool:
    try:
        if a.stat().st_size != b.stat().st_size:
            return False
    except FileNotFoundError:
        return False
    return _digest_file(a, "sha256") == _digest_file(b, "sha256")


def _copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


def populate(data_dir: Path, *, ipxe: Path = IPXE, netboot: Path = NETBOOT) -> list[str]:
    """Copy images from installed packages into ``data_dir``; say what was done.

    Every OS's ``package`` sources (the Debian netboot installer) and the
    iPXE loaders (``tftp/`` and ``bin/``). Files already identical are left.
    """
    data_dir = Path(data_dir)
    done: list[str] = []
    boot = data_dir / "boot"
    for os_folder in sorted(p for p in boot.iterdir() if p.is_dir()) if boot.is_dir() else []:
        if not (os_folder / "images" / "sources.toml").is_file():
            continue
        for img in read_manifest(os_folder).images:
            if img.package is None:
                continue
            dest = os_folder / "images" / img.name
            rel = dest.relative_to(data_dir)
            src = Path(img.package)
            if not src.is_file():
                done.append(f"{rel}: not copied, {src} is not installed")
            elif _same(src, dest):
                done.append(f"{rel}: already there")
            else:
                _copy(src, dest)
                done.append(f"{rel}: copied from {src} ({_size(dest)})")
    for loader, folders in IPXE_LOADERS.items():
        src = (ipxe / loader).resolve()
        for folder in folders:
            dest = data_dir / folder / loader
            rel = dest.relative_to(data_dir)
            if not src.is_file():
                done.append(f"{rel}: not copied, {ipxe / loader} is not installed "
                            "(Debian package ipxe)")
            elif _same(src, dest):
                done.append(f"{rel}: already there")
            else:
                _copy(src, dest)
                done.append(f"{rel}: copied from {ipxe / loader} ({_size(dest)})")
    for arch, loaders in SHIM_LOADERS.items():
        folder = netboot / arch / "text" / "debian-installer" / arch
        for loader in loaders:
            src = folder / loader
            dest = data_dir / "tftp" / "debian-installer" / arch / loader
            rel = dest.relative_to(data_dir)
            if not src.is_file():
                done.append(f"{rel}: not copied, {src} is not installed (Debian package "
                            f"debian-installer-12-netboot-{arch}; needed for Secure Boot)")
            elif _same(src, dest):
                done.append(f"{rel}: already there")
            else:
                _copy(src, dest)
                done.append(f"{rel}: copied from {src} ({_size(dest)})")
    return done


# --- from upstream ----------------------------------------------------------------------------

def _digest_file(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _open(url: str) -> Any:
    try:
        return urllib.request.urlopen(urllib.request.Request(
            url, headers={"User-Agent": "astralboot-fetch"}), timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(f"{url}: cannot download: {reason}") from None


def _read_small(url: str, limit: int = 8 << 20) -> str:
    with _open(url) as resp:
        data = resp.read(limit + 1)
    if len(data) > limit:
        raise FetchError(f"{url}: a checksum file larger than {limit} bytes")
    return data.decode("utf-8", errors="replace")


_LINE_FORMS = (
    re.compile(r"^(?P<hex>[0-9a-fA-F]{32,128})\s+\*?(?P<name>\S.*?)\s*$"),        # GNU, DIGESTS
    re.compile(r"^\w+\s*\((?P<name>.+)\)\s*=\s*(?P<hex>[0-9a-fA-F]{32,128})\s*$"),  # BSD
    re.compile(r"^(?P<name>\S+)\s*=\s*\w+:(?P<hex>[0-9a-fA-F]{32,128})\s*$"),      # .treeinfo
)
_HEX_LEN = {"sha256": 64, "sha512": 128, "sha1": 40, "md5": 32}


def parse_checksums(text: str, name: str, algorithm: str = "sha256") -> str | None:
    """The digest for ``name`` in a checksum file, matched by its length to ``algorithm``."""
    want = _HEX_LEN.get(algorithm)
    found: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for form in _LINE_FORMS:
            m = form.match(line)
            if m and (want is None or len(m.group("hex")) == want):
                found.setdefault(m.group("name").strip(), m.group("hex").lower())
                break
    clean = name.removeprefix("./")
    for key, value in found.items():
        if key.removeprefix("./") == clean:
            return value
    base = [v for k, v in found.items() if k.rsplit("/", 1)[-1] == clean.rsplit("/", 1)[-1]]
    return base[0] if len(base) == 1 else None


def expected_digest(src: Source) -> tuple[str, str]:
    """(algorithm, hex digest) the download of ``src`` must have."""
    if src.sha256:
        return "sha256", src.sha256.lower()
    if not src.checksums:
        raise FetchError(f"{src.name}: no sha256 and no checksums URL to verify it against")
    if src.algorithm not in _HEX_LEN:
        raise FetchError(f"{src.name}: unsupported algorithm {src.algorithm!r}")
    name = src.checksums_name or urlsplit(src.url or "").path.rsplit("/", 1)[-1]
    digest = parse_checksums(_read_small(src.checksums), name, src.algorithm)
    if digest is None:
        raise FetchError(f"{src.name}: {name!r} is not listed in {src.checksums}")
    return src.algorithm, digest


def download(url: str, dest: Path, algorithm: str, digest: str,
             progress: Progress | None = None) -> None:
    """Fetch ``url`` into ``dest`` only if its bytes hash to ``digest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.new(algorithm)
    try:
        with os.fdopen(fd, "wb") as out, _open(url) as resp:
            length = resp.headers.get("Content-Length")
            bar = progress(dest.name, int(length) if length and length.isdigit() else None) \
                if progress else None
            try:
                while block := resp.read(CHUNK):
                    h.update(block)
                    out.write(block)
                    if bar is not None:
                        bar.update(len(block))
            except OSError as exc:
                raise FetchError(f"{url}: download broke off: {exc}") from None
            finally:
                if bar is not None:
                    bar.close()
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != digest:
            raise FetchError(f"{url}: {algorithm} is {h.hexdigest()}, expected {digest}; "
                             "nothing was kept")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def build_overlay(os_folder: Path, overlay: Overlay, dest: Path) -> None:
    """A tar.gz of ``os_folder/overlay.folder`` (root-owned, modes and links as declared)."""
    root = os_folder / overlay.folder
    if not root.is_dir():
        raise FetchError(f"{root}: overlay folder missing")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        def add_dir(rel: str) -> None:
            info = tarfile.TarInfo(rel)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        dirs: set[str] = set()
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_dir():
                add_dir(rel)
                dirs.add(rel)
                continue
            data = path.read_bytes()
            info = tarfile.TarInfo(rel)
            info.size, info.mtime = len(data), 0
            info.mode = 0o755 if rel in overlay.executable else 0o644
            tar.addfile(info, io.BytesIO(data))
        for link, target in sorted(overlay.links.items()):
            parts = link.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    add_dir(d)
                    dirs.add(d)
            info = tarfile.TarInfo(link)
            info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, target, 0o777, 0
            tar.addfile(info)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".tmp-{dest.name}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, dest)


def fetch(data_dir: Path, os_name: str, *, force: bool = False,
          progress: Progress | None = None) -> list[str]:
    """Download (or build) every image of ``boot/<os_name>``; say what was done."""
    os_folder = Path(data_dir) / "boot" / os_name
    if not os_folder.is_dir():
        raise FetchError(f"{os_folder}: no such OS folder")
    manifest = read_manifest(os_folder)
    images = os_folder / "images"
    done: list[str] = []
    fetched_archives: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=images) as work:
        for img in manifest.images:
            dest = images / img.name
            rel = f"boot/{os_name}/images/{img.name}"
            if img.archive is not None:
                archive = manifest.archives[img.archive]
                if dest.is_file() and not force:
                    done.append(f"{rel}: already there (--force to fetch {archive.name} again)")
                    continue
                if img.archive not in fetched_archives:
                    algorithm, digest = expected_digest(archive)
                    path = Path(work) / archive.name
                    download(_url(archive), path, algorithm, digest, progress)
                    fetched_archives[img.archive] = path
                _extract(fetched_archives[img.archive], img.member or img.name, dest)
                done.append(f"{rel}: from {archive.url} ({img.member}, {_size(dest)})")
                continue
            if img.url is None:
                continue  # package-only: populate's business
            algorithm, digest = expected_digest(img)
            if not force and dest.is_file() and _digest_file(dest, algorithm) == digest:
                done.append(f"{rel}: already there and verified")
                continue
            download(img.url, dest, algorithm, digest, progress)
            done.append(f"{rel}: downloaded and verified ({algorithm}, {_size(dest)})")
    for overlay in manifest.overlays:
        dest = images / overlay.name
        build_overlay(os_folder, overlay, dest)
        done.append(f"boot/{os_name}/images/{overlay.name}: built from {overlay.folder}/")
    return done


def _url(src: Source) -> str:
    if not src.url:
        raise FetchError(f"{src.name}: no url")
    return src.url


def _extract(archive: Path, member: str, dest: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            try:
                info = tar.getmember(member)
            except KeyError:
                info = tar.getmember("./" + member)
            f = tar.extractfile(info)
            if f is None:
                raise FetchError(f"{archive.name}: {member} is not a file")
            tmp = dest.with_name(f".tmp-{dest.name}")
            with open(tmp, "wb") as out:
                shutil.copyfileobj(f, out, CHUNK)
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
    except KeyError:
        raise FetchError(f"{archive.name}: no member {member}") from None
    except tarfile.TarError as exc:
        raise FetchError(f"{archive.name}: {exc}") from None
