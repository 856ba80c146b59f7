"""Admin API tokens: the secret an operator holds, and the digest the store keeps.

A token is ``abt_`` and 43 random URL-safe characters (256 bits), so its
SHA-256 is as good as a slow password hash and costs nothing to check.
Only the digest is ever stored or sent over the bus: ``astralboot token
create`` draws the secret, sends the digest, and prints the secret once.
The CLI's own token lives in ``admin.token`` beside config.toml, readable
by its owner alone.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path

from astralboot.common.errors import ConfigError

PREFIX = "abt_"
TOKEN_FILE = "admin.token"
_SHAPE = re.compile(r"abt_[A-Za-z0-9_-]{43}")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """The hex SHA-256 the store keeps for ``secret``."""
    return hashlib.sha256(secret.encode()).hexdigest()


def well_formed(secret: str) -> bool:
    return bool(_SHAPE.fullmatch(secret))


def token_path(config_folder: Path) -> Path:
    return config_folder / TOKEN_FILE


def save(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path`` readable by its owner only (replacing any)."""
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.replace(tmp, path)


def load(path: Path) -> str:
    """The token kept at ``path``; ConfigError naming the file if it is unusable."""
    try:
        secret = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(path, "token", "no admin token here; make one with "
                                         "`astralboot token create NAME`") from None
    except OSError as exc:
        raise ConfigError(path, "token", f"cannot read: {exc.strerror}") from None
    if not well_formed(secret):
        raise ConfigError(path, "token", "not an AstralBoot token")
    return secret
