"""HMAC-signed, expiring links to stored results, and the one secret that signs them.

No install signs with a published secret. Unset, the secret is generated on first start and kept
beside the database (`signing-secret`, owner-only), so `darkroom serve` needs no setup; a fleet
passes one explicitly to every API process. The database keeps the secret's fingerprint: a
process whose secret differs from the one the deployment recorded refuses to start, rather than
sign links the other processes reject.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import structlog
from sqlalchemy import Connection, insert, select, update

from darkroom.db.database import Database
from darkroom.db.schema import fingerprints

log = structlog.get_logger("darkroom.signing")

SECRET_FILE = "signing-secret"
MIN_SECRET_CHARS = 32
# Secrets that were ever published (in this project's source): a link signed with one of them
# can be forged by anyone.
KNOWN_SECRETS = frozenset({"dev-insecure-signing-secret"})
FINGERPRINT_NAME = "link-signing-secret"


class SecretRefused(RuntimeError):
    """This process's signing secret cannot be used; the message says what to do."""


def check_secret(secret: str) -> str:
    """`secret`, unless it is published or too short to resist guessing (ValueError)."""
    if secret in KNOWN_SECRETS:
        raise ValueError("DARKROOM_SIGNING_SECRET is a published value; generate your own")
    if len(secret) < MIN_SECRET_CHARS:
        raise ValueError(
            f"DARKROOM_SIGNING_SECRET must be at least {MIN_SECRET_CHARS} characters; make one "
            "with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return secret


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


def fingerprint(secret: str) -> str:
    """What the database keeps of the secret: an HMAC made with it, which does not reveal it."""
    return hmac.new(secret.encode(), b"darkroom link-signing fingerprint", "sha256").hexdigest()


async def agree_on_secret(db: Database, secret: str) -> None:
    """Record this secret's fingerprint if the deployment has none; SecretRefused if it
    recorded another (two API processes would reject each other's links)."""
    mine = fingerprint(secret)

    def run(conn: Connection) -> str:
        query = select(fingerprints.c.fingerprint).where(fingerprints.c.name == FINGERPRINT_NAME)
        recorded: str | None = conn.execute(query).scalar_one_or_none()
        if recorded is None:
            conn.execute(
                insert(fingerprints).values(
                    name=FINGERPRINT_NAME, fingerprint=mine, recorded_at=datetime.now(UTC)
                )
            )
            return mine
        return recorded

    recorded = await db.write(run)
    if not hmac.compare_digest(recorded, mine):
        raise SecretRefused(
            "this process's link-signing secret is not the one the other processes of this "
            "deployment use: give every API process the same DARKROOM_SIGNING_SECRET. If you "
            "changed it on purpose, run `darkroom signing-secret --adopt` with the new one."
        )


async def adopt_secret(db: Database, secret: str) -> None:
    """Make `secret` the deployment's (links signed with the previous one stop working)."""
    values = {"fingerprint": fingerprint(secret), "recorded_at": datetime.now(UTC)}

    def run(conn: Connection) -> None:
        changed = conn.execute(
            update(fingerprints).where(fingerprints.c.name == FINGERPRINT_NAME).values(**values)
        ).rowcount
        if not changed:
            conn.execute(insert(fingerprints).values(name=FINGERPRINT_NAME, **values))

    await db.write(run)


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
