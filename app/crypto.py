"""Runner secrets at rest: Fernet keys from WARMPOOL_SECRET_KEYS (the first encrypts, all decrypt).

Under WARMPOOL_ENV=dev with no keys set, one key is made once and kept in `<data dir>/secret.key` (mode 0600),
so `warmpool dev` needs no set-up; everywhere else Settings refuses to load without keys. A key never
appears in a log, a response or an error message.
"""
from __future__ import annotations

import os
import time
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

DEV_KEY_FILE = "secret.key"


class SecretKeyError(Exception):
    """A secret could not be decrypted with any configured key (the message names no key and no secret)."""


def _dev_key(data_dir: Path) -> str:
    """The dev key in the data dir, made on first use; O_EXCL so concurrent processes agree on one key."""
    path = data_dir / DEV_KEY_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(Fernet.generate_key().decode())
    for _ in range(100):  # another process may be between its create and its write
        text = path.read_text().strip()
        if text:
            return text
        time.sleep(0.01)
    raise SecretKeyError(f"{path} is empty: delete it and start again")


def configured_keys() -> list[str]:
    from config.settings import get_settings

    s = get_settings()
    keys = [k.strip() for k in s.secret_keys.get_secret_value().split(",") if k.strip()]
    if not keys and s.env == "dev":
        keys = [_dev_key(Path(s.data_dir))]
    if not keys:
        raise SecretKeyError("WARMPOOL_SECRET_KEYS is not set")
    return keys


@lru_cache(maxsize=8)
def _keyring(keys: tuple[str, ...]) -> MultiFernet:
    try:
        return MultiFernet([Fernet(k.encode()) for k in keys])
    except (ValueError, TypeError):
        raise SecretKeyError("WARMPOOL_SECRET_KEYS holds a value that is not a Fernet key "
                             "(32 url-safe base64-encoded bytes)") from None


def keyring() -> MultiFernet:
    return _keyring(tuple(configured_keys()))


def encrypt(plain: str) -> str:
    return keyring().encrypt(plain.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return keyring().decrypt(token.encode()).decode()
    except (InvalidToken, ValueError, TypeError):
        raise SecretKeyError("a stored secret cannot be decrypted with any key in WARMPOOL_SECRET_KEYS "
                             "(was its key removed before `warmpool secrets rotate`?)") from None


def rotate(token: str) -> str:
    """The same secret encrypted with the first (newest) key."""
    try:
        return keyring().rotate(token.encode()).decode()
    except (InvalidToken, ValueError, TypeError):
        raise SecretKeyError("a stored secret cannot be decrypted with any key in WARMPOOL_SECRET_KEYS") from None
