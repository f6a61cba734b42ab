"""HMAC-signed, expiring links to stored results, and the one secret that signs them.

No install signs with a published secret. Unset, the secret is generated on first start and kept
beside the database (`signing-secret`, owner-only), so `darkroom serve` needs no setup; a fleet
passes one explicitly to every API process. The database keeps the secret's fingerprint: a
process whose secret differs from the one the deployment recorded refuses to start, rather than
sign links the other processes reject (`darkroom.db.fingerprints`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

import structlog

from darkroom.settings import SecretRefused, check_secret

log = structlog.get_logger("darkroom.signing")

SECRET_FILE = "signing-secret"


def load_or_create_secret(data_dir: Path) -> str:
    """The secret kept in `data_dir`, made (random, owner-only) by the first process to start.

    Written whole under a temporary name, then linked to its own: processes starting together
    all read the one that was linked first, never a half-written file."""
    path = data_dir / SECRET_FILE
    if path.exists():
        return _read_secret(path)
    data_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=".signing-secret-")  # mode 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
        log.info("generated the link-signing secret", path=str(path))
    except FileExistsError:
        pass  # another process was first: use its secret
    finally:
        Path(tmp).unlink(missing_ok=True)
    return _read_secret(path)


def _read_secret(path: Path) -> str:
    secret = path.read_text().strip()
    if os.name == "posix" and path.stat().st_mode & 0o077:
        log.warning("the link-signing secret is readable by others; chmod 600 it", path=str(path))
    try:
        return check_secret(secret)
    except ValueError as exc:
        raise SecretRefused(f"{path}: {exc}") from None


class LinkSigner:
    """Signs `path` together with its expiry; checking is constant-time."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self._key = secret.encode()

    def signature(self, path: str, expires: int) -> str:
        message = f"{path}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def is_authentic(self, path: str, expires: int, signature: str) -> bool:
        """True if `signature` was made by this secret for this path and expiry (expired or not).

        Any text is an answer, never an error: a signature that is not ASCII is simply wrong.
        """
        expected = self.signature(path, expires).encode()
        return hmac.compare_digest(expected, signature.encode("utf-8", "surrogatepass"))
