"""crypt(3) SHA-512 hashes for the password installed systems get.

Debian's preseed, kickstart and cloud-init all take a ``$6$`` hash. Python's
``crypt`` module makes it (gone from Python 3.13); without it, ``openssl
passwd -6`` does.
"""

from __future__ import annotations

import secrets
import string
import subprocess
import warnings

from astralboot.common.errors import AstralBootError

_ALPHABET = string.ascii_letters + string.digits


def new_password(length: int = 16) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def sha512_crypt(password: str) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # noqa: PLC0415 (optional: removed in Python 3.13)
        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))
    except ImportError:
        pass
    try:
        done = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password,
                              capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise AstralBootError(f"cannot hash a password (no crypt module, no openssl): "
                              f"{exc}") from None
    return done.stdout.strip()
