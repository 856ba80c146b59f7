"""Creating a data folder from the bundled layout.

The layout is the original server's: ``boot/<os>/template/*.tmpl``,
``boot/<os>/images/``, ``boot/<os>/classes.toml``, ``tftp/``, ``bin/``.
Files already in the folder are never overwritten, so running ``init``
again over an operator's edited folder only adds what is missing.
"""

from __future__ import annotations

import importlib
import shutil
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

SKIP = {"__pycache__", "__init__.py"}


def bundled_root() -> Traversable:
    return resources.files("astralboot.common").joinpath("bundled")


def _copy_tree(src: Traversable, dst: Path, created: list[str], root: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.name in SKIP:
            continue
        target = dst / item.name
        if item.is_dir():
            _copy_tree(item, target, created, root)
        elif not target.exists():
            with item.open("rb") as fin, open(target, "wb") as fout:
                shutil.copyfileobj(fin, fout)
            created.append(str(target.relative_to(root)))


def create(data: Path) -> list[str]:
    """Copy the bundled layout into ``data`` (adding only what is missing),
    then fill images from locally installed packages where possible.

    Returns a line per file or image added, for the operator.
    """
    created: list[str] = []
    data.mkdir(parents=True, exist_ok=True)
    for sub in ("boot", "tftp", "bin"):
        (data / sub).mkdir(exist_ok=True)
    _copy_tree(bundled_root(), data, created, data)
    notes = [f"created {path}" for path in created]
    try:
        images = importlib.import_module("astralboot.common.cli.images")
    except ModuleNotFoundError:
        return notes
    notes.extend(images.populate(data))
    return notes
